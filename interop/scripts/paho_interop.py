"""Run an Eclipse Paho interoperability client suite against a broker.

    python3 paho_interop.py {v311|v5} HOST PORT[,PORT...] [TEST...] [--timeout SECONDS] [--paho DIR]

v311 is client_test.py (MQTT 3.1.1), v5 is client_test5.py (MQTT 5.0), both in the
`interoperability/` folder of a paho.mqtt.testing checkout: --paho DIR, else $TERN_PAHO_TESTING,
else ../shared/peers/paho.mqtt.testing beside this repository. The suites are used in place and
nothing is written into that folder: no bytecode, and the tests run in a temporary directory.

Each test runs in a process of its own (forked from this one once the suite is imported) and is
killed after --timeout seconds (default 60): some tests wait forever for a packet a broker does
not send. One line per test, `PASS name`, `FAIL name: reason` or `TIMEOUT name`, in the order
they finish, then `N passed, M failed`. The output of each test that did not pass goes to stderr
(--log-dir DIR keeps every test's output). Exit status 0 only if every test passed.

With several comma-separated ports, that many tests run at a time, one at a time on each port:
give each port a broker of its own, since the tests of a suite share client identifiers and
topics. With one port the tests run one after the other, as the suite does by itself.
"""
import argparse
import functools
import logging
import os
import re
import shutil
import signal
import sys
import tempfile
import threading
import time
import unittest

# Nothing may be written next to the suites (CI has a read-only copy).
sys.dont_write_bytecode = True

SUITES = {"v311": "client_test", "v5": "client_test5"}
HERE = os.path.dirname(os.path.abspath(__file__))
DEFAULT_PAHO = os.path.join(HERE, "..", "..", "..", "shared", "peers", "paho.mqtt.testing")
# Most output of a test that did not pass shown on stderr, in characters (its end is kept).
DETAIL = 2000


def paho_dir(arg):
    """The suites' folder, or exit saying where it was looked for."""
    where = os.path.normpath(os.path.abspath(arg or os.environ.get("TERN_PAHO_TESTING") or DEFAULT_PAHO))
    interop = os.path.join(where, "interoperability")
    if not os.path.isfile(os.path.join(interop, "client_test5.py")):
        sys.exit(
            "paho.mqtt.testing not found: no interoperability/client_test5.py in %s "
            "(give --paho or TERN_PAHO_TESTING)" % where
        )
    return interop


def configure(m, suite, host, port):
    """Set the globals that the suite's `__main__` block sets."""
    m.host = host
    m.port = port
    m.nosubscribe_topics = ("test/nosubscribe",)
    topics = ["TopicA", "TopicA/B", "Topic/C", "TopicA/C", "/TopicA"]
    wildtopics = ["TopicA/+", "+/C", "#", "/#", "/+", "+/+", "TopicA/#"]
    if suite == "v5":
        # As client_test5.py's __main__ block. Test.setUpClass then calls setData(), which
        # sets the unprefixed topics again: only test_shared_subscriptions uses the prefix.
        m.topic_prefix = "client_test5/"
        m.topics = [m.topic_prefix + t for t in topics]
        m.wildtopics = [m.topic_prefix + t for t in wildtopics]
    else:
        m.topics = tuple(topics)
        m.wildtopics = tuple(wildtopics)


def strict(cls, name):
    """Count a test that returns False as failed.

    Some tests catch their own exceptions and return their verdict instead of asserting it:
    client_test5.py's test_zero_length_clientid returns False on failure, which unittest only
    warns about. This makes that verdict a failure; it cannot turn a failure into a pass.
    """
    method = getattr(cls, name)

    @functools.wraps(method)
    def checked(self):
        if method(self) is False:
            self.fail("%s returned False: the test's own verdict is that it failed" % name)

    setattr(cls, name, checked)


def child(m, args, name, port, log):
    """In the forked process: run one test with its output in `log`, then exit."""
    parent = os.getppid()
    fd = os.open(log, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    os.dup2(fd, 1)
    os.dup2(fd, 2)
    os.close(fd)
    sys.stdout.reconfigure(line_buffering=True)
    code = 1
    try:

        def orphaned():
            # The driver was killed: do not go on talking to a broker nobody watches.
            while os.getppid() == parent:
                time.sleep(0.5)
            os._exit(3)

        threading.Thread(target=orphaned, daemon=True).start()
        configure(m, args.suite, args.host, port)
        logging.getLogger().setLevel(logging.ERROR)
        strict(m.Test, name)
        prog = unittest.main(module=m, argv=[SUITES[args.suite], "Test." + name], exit=False, verbosity=2)
        code = 0 if prog.result.wasSuccessful() and prog.result.testsRun == 1 else 1
    except BaseException:
        import traceback

        traceback.print_exc()
    finally:
        sys.stdout.flush()
        sys.stderr.flush()
        # Receiver threads of the suite's clients may still be blocked on their sockets.
        os._exit(code)


ERROR_LINE = re.compile(r"^([A-Za-z_][\w.]*(Error|Exception)\b.*)$")


def reason(output):
    """The distinct exception lines of a test's output, in order."""
    seen = []
    for line in output.splitlines():
        m = ERROR_LINE.match(line)
        if m and m.group(1) not in seen:
            seen.append(m.group(1))
    return " / ".join(seen) if seen else "failed (see its output)"


def run_suite(args, ports, workdir):
    """Run the tests; returns the number that did not pass."""
    os.chdir(workdir)
    sys.path.insert(0, args.interop)
    m = __import__(SUITES[args.suite])
    names = list(unittest.TestLoader().getTestCaseNames(m.Test))
    if args.tests:
        unknown = [t for t in args.tests if t not in names]
        if unknown:
            sys.exit("no such test in %s.py: %s" % (SUITES[args.suite], ", ".join(unknown)))
        names = list(args.tests)
    print("%s.py: %d tests against %s port%s %s" % (
        SUITES[args.suite], len(names), args.host, "s" if len(ports) > 1 else "", ",".join(map(str, ports))),
        flush=True)

    todo = list(names)
    free = list(ports)
    running = {}  # pid: (name, port, log, started)
    passed = 0
    suite_started = time.monotonic()

    def finished(pid, verdict):
        nonlocal passed
        name, port, log, started = running.pop(pid)
        free.append(port)
        with open(log, encoding="utf-8", errors="replace") as f:
            out = f.read()
        if args.log_dir:
            shutil.copy(log, os.path.join(args.log_dir, name + ".log"))
        if verdict == "PASS":
            passed += 1
            print("PASS %s" % name, flush=True)
        elif verdict == "FAIL":
            print("FAIL %s: %s" % (name, reason(out)), flush=True)
        else:
            print("TIMEOUT %s" % name, flush=True)
        sys.stderr.write("# %s: %s in %.1f s\n" % (name, verdict, time.monotonic() - started))
        if verdict != "PASS":
            tail = out if len(out) <= DETAIL else "...\n" + out[-DETAIL:]
            sys.stderr.write("---- %s %s (port %d) ----\n%s\n" % (verdict, name, port, tail))
        sys.stderr.flush()

    while todo or running:
        while todo and free:
            name, port = todo.pop(0), free.pop(0)
            log = os.path.join(workdir, name + ".log")
            sys.stdout.flush()
            sys.stderr.flush()
            pid = os.fork()
            if pid == 0:
                child(m, args, name, port, log)
            running[pid] = (name, port, log, time.monotonic())
        time.sleep(0.1)
        for pid in list(running):
            done, status = os.waitpid(pid, os.WNOHANG)
            if done:
                finished(pid, "PASS" if os.waitstatus_to_exitcode(status) == 0 else "FAIL")
            elif time.monotonic() - running[pid][3] > args.timeout:
                os.kill(pid, signal.SIGKILL)
                os.waitpid(pid, 0)
                finished(pid, "TIMEOUT")
    sys.stderr.write("# %s.py took %.0f s\n" % (SUITES[args.suite], time.monotonic() - suite_started))
    print("%d passed, %d failed" % (passed, len(names) - passed), flush=True)
    return len(names) - passed


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("suite", choices=sorted(SUITES))
    ap.add_argument("host")
    ap.add_argument("port", help="a port, or comma-separated ports of separate brokers to run tests in parallel")
    ap.add_argument("tests", nargs="*", help="test names (default: every test of the suite)")
    ap.add_argument("--timeout", type=float, default=60.0, help="seconds allowed to each test (default 60)")
    ap.add_argument("--paho", help="the paho.mqtt.testing checkout (default $TERN_PAHO_TESTING, "
                    "else ../shared/peers/paho.mqtt.testing beside the repository)")
    ap.add_argument("--log-dir", help="write each test's output to LOG_DIR/NAME.log")
    args = ap.parse_args()
    args.interop = paho_dir(args.paho)
    if args.log_dir:
        args.log_dir = os.path.abspath(args.log_dir)
        os.makedirs(args.log_dir, exist_ok=True)
    ports = [int(p) for p in args.port.split(",") if p]
    workdir = tempfile.mkdtemp(prefix="paho-interop-")
    try:
        failed = run_suite(args, ports, workdir)
    finally:
        os.chdir("/")
        shutil.rmtree(workdir, ignore_errors=True)
    sys.exit(0 if failed == 0 else 1)


if __name__ == "__main__":
    main()
