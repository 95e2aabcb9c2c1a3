"""The supervisor as PID 1 of a PID namespace (as in a container): it reaps orphans that get
reparented to it, and SIGTERM stops every worker and exits 0 within --shutdown-timeout."""

import os
import random
import signal
import subprocess
import time
import unittest

import harness as h

SHUTDOWN = 5.0  # --shutdown-timeout, seconds
SLACK = 3.0


def ns_pids(pid):
    """The NSpid line of /proc/pid/status: [host pid, ..., innermost namespace pid]."""
    st = h.proc_status(pid)
    return None if st is None else [int(x) for x in st["NSpid"].split()]


def start_time(pid):
    try:
        with open(f"/proc/{pid}/stat") as f:
            return f.read().rsplit(")", 1)[1].split()[19]
    except (FileNotFoundError, ProcessLookupError, IndexError):
        return None


class Pid1Test(h.IntegrationTestCase):

    def setUp(self):
        super().setUp()
        probe = subprocess.run(["unshare", "--pid", "--fork", "--", "/bin/true"],
                               capture_output=True, text=True, timeout=10)
        if probe.returncode != 0:
            if "Operation not permitted" in probe.stderr or "EPERM" in probe.stderr:
                self.skipTest("cannot create a PID namespace here (unshare --pid: EPERM); "
                              "run as root or with CAP_SYS_ADMIN")
            self.fail(f"unshare --pid --fork failed ({probe.returncode}): {probe.stderr}")

    def test_reaps_orphans_and_stops_on_sigterm(self):
        p = self.start_principal(plaintext=True, prefix=["unshare", "--pid", "--fork", "--"],
                                 extra=["--log-level", "debug"], shutdown_timeout=f"{SHUTDOWN:g}s")
        unshare_pid = p.pid  # the Popen child is unshare; the supervisor is its child

        def supervisor():
            kids = [k for k in h.children_of(unshare_pid) if h.proc_comm(k) == "aa-principal"]
            return kids[0] if len(kids) == 1 else None

        sup = h.wait_for(supervisor, 10, "the supervisor as the child of unshare")
        # unshare does not forward SIGTERM: stop the supervisor itself first on cleanup.
        self.addCleanup(_terminate, sup)
        self.assertEqual(ns_pids(sup)[-1], 1, "the supervisor is not PID 1 of its namespace")
        st = p.status()
        self.assertEqual(st["supervisorPid"], 1)

        workers = {k: h.proc_comm(k) for k in h.children_of(sup)}
        self.assertEqual(sorted(workers.values()), sorted(f"aa-{r}" for r in h.PRINCIPAL_ROLES),
                         workers)
        # The status (namespace pids) names exactly these processes.
        self.assertEqual(sorted(w["pid"] for w in st["workers"]),
                         sorted(ns_pids(k)[-1] for k in workers))

        # --- an orphan reparented to PID 1 is reaped -------------------------------------------
        arg = f"0.9{os.getpid() % 1000:03d}{random.randrange(1000):03d}"  # unique cmdline
        r = subprocess.run(["nsenter", f"--target={sup}", "--pid", "--", "/bin/sh", "-c",
                            f"sleep {arg} </dev/null >/dev/null 2>&1 & exit 0"],
                           capture_output=True, text=True, timeout=10)
        self.assertEqual(r.returncode, 0, r.stderr)

        seen = {}

        def reparented():
            for pid in h.pids_where(lambda x: h.proc_cmdline(x) == ["sleep", arg]):
                seen["pid"] = pid
                nsp, started = ns_pids(pid), start_time(pid)
                if h.proc_ppid(pid) == sup and nsp and started:
                    seen["ns"], seen["start"] = nsp[-1], started
                    return pid
            return None

        orphan = h.wait_for(reparented, 5, f"'sleep {arg}' reparented to the supervisor (pid {sup}); "
                                           f"last seen {seen}", interval=0.005)
        self.assertNotEqual(seen["ns"], orphan, "orphan should have a namespace pid")

        def gone():
            # Gone entirely: no zombie left behind (a recycled pid has another start time).
            return h.proc_state(orphan) is None or start_time(orphan) != seen["start"]

        try:
            h.wait_for(gone, 10, f"orphan pid {orphan} to disappear")
        except AssertionError:
            self.fail(f"orphan pid {orphan} still there in state {h.proc_state(orphan)} "
                      f"(Z = zombie not reaped by PID 1)")
        p.wait_log(rf"reaped orphan pid {seen['ns']} \(exit 0\)", timeout=5)
        self.assertTrue(p.alive())
        self.assertTrue(all(w["state"] == "READY" for w in p.status()["workers"]))

        # --- SIGTERM: orderly stop within --shutdown-timeout ------------------------------------
        t0 = time.monotonic()
        os.kill(sup, signal.SIGTERM)
        try:
            rc = p.popen.wait(timeout=SHUTDOWN + SLACK)
        except subprocess.TimeoutExpired:
            self.fail(f"not stopped {SHUTDOWN + SLACK}s after SIGTERM; log tail:\n{h.tail(p.log)}")
        elapsed = time.monotonic() - t0
        self.assertEqual(rc, 0, h.tail(p.log))
        self.assertLess(elapsed, SHUTDOWN + SLACK)
        log = p.text()
        self.assertRegex(log, r"SIGTERM: stopping workers \(deadline 5000ms\)")
        self.assertRegex(log, r"all workers stopped; exiting 0")
        for role in h.PRINCIPAL_ROLES:
            self.assertRegex(log, rf"worker {role} \(pid \d+\) stopped: ")
        self.assertNotRegex(log, r"did not stop in time")
        h.wait_for(lambda: all(h.proc_state(k) is None for k in list(workers) + [sup]), 3,
                   "supervisor and worker pids gone")


def _terminate(pid):
    if h.proc_alive(pid):
        os.kill(pid, signal.SIGTERM)


if __name__ == "__main__":
    unittest.main()
