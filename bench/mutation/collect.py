"""Print every mutant's status and every survivor's diff of the mutmut run in the current folder, as JSON.

Run by bench/mutation/run.py inside a module's scratch folder (mutmut reads its settings from the pyproject.toml
of the folder it is imported in); one process instead of one ``mutmut show`` per survivor.
"""
from __future__ import annotations

import json
import sys

from mutmut.mutation.data import SourceFileMutationData
from mutmut.mutation.diff_apply import get_diff_for_mutant
from mutmut.stats import status_by_exit_code
from mutmut.utils.file_utils import walk_mutatable_files


def main() -> None:
    statuses: dict[str, str] = {}
    survivors: dict[str, str] = {}
    for path in walk_mutatable_files():
        data = SourceFileMutationData(path=path)
        data.load()
        for name, exit_code in data.exit_code_by_key.items():
            statuses[name] = status_by_exit_code[exit_code]
            if statuses[name] in ("survived", "no tests", "timeout", "suspicious"):
                survivors[name] = get_diff_for_mutant(name, path=path)
    json.dump({"statuses": statuses, "survivors": survivors}, sys.stdout)


if __name__ == "__main__":
    main()
