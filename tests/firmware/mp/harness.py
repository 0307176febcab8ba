# Appended to every case script: runs its test_* functions in file order of their names and
# prints one line each, then "DONE <count> <failed>". Runs in MicroPython and on CPython.
import sys


def _run_all(ns):
    names = sorted(k for k in ns if k.startswith("test_"))
    failed = 0
    for name in names:
        try:
            ns[name]()
            print("ok", name)
        except Exception as e:
            failed += 1
            print("FAIL", name, repr(e))
            sys.print_exception(e)
    print("DONE", len(names), failed)


_run_all(globals())
