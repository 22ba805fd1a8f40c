"""Run ``train.py``'s entry point (``plmods.cli.main``) over a list of command lines in ONE
process: ``python tests/bad_input_runner.py cases.json results.json``.

Each case is ``{"argv": [...], "env": {...}}``; each result ``{"code": exit code, "stderr": ...}``
(an exception that escapes is recorded with its traceback as code ``"exception"``). One process
for the whole bad-input table: a Python start with torch and Lightning costs ~5 s per case.
"""

import contextlib
import io
import json
import os
import sys
import traceback


def run_cases(cases: list[dict]) -> list[dict]:
    from plmods.cli import main

    results = []
    for case in cases:
        saved = dict(os.environ)
        os.environ.update(case.get("env", {}))
        stderr = io.StringIO()
        with contextlib.redirect_stderr(stderr), contextlib.redirect_stdout(io.StringIO()):
            try:
                main(list(case["argv"]))
                code = 0
            except SystemExit as exit_:
                code = exit_.code if isinstance(exit_.code, int) else (0 if exit_.code is None else 1)
            except BaseException:  # noqa: BLE001 - the table records it as a failure of the case
                code = "exception"
                stderr.write(traceback.format_exc())
        os.environ.clear()
        os.environ.update(saved)
        results.append({"code": code, "stderr": stderr.getvalue()})
    return results


if __name__ == "__main__":
    with open(sys.argv[1]) as f:
        cases = json.load(f)
    with open(sys.argv[2], "w") as f:
        json.dump(run_cases(cases), f)
