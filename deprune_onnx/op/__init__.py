"""The DRSparseDepthwiseConv custom op: its constants, packed DR layout, oracle, rewrite and lowering.

The single specification is trt_plugins/dr_sparse_dwconv/DRSparseDepthwiseConv_PluginConfig.yaml.
"""
