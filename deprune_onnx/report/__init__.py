"""What a prune produced, made readable: the report dict, its HTML page and plots, and the masks .npz export.
"""
