#!/usr/bin/python3
"""CPU time of every thread of a process tree, by thread name.

    cpu-by-thread.py OUT -- COMMAND...

Runs COMMAND and samples /proc every 50 ms for it and its descendants
(looked for every 250 ms):
each thread's user and system ticks (latest seen) and each process's own
totals (which keep the time of threads that already exited). Writes OUT,
one line per (process name, thread name): `proc thread user_s sys_s`,
plus a line `proc (exited threads) user_s sys_s` for what the threads
sampled do not account for, and `(sampler) self user_s sys_s`: this
script's own cost, which a whole-machine figure should leave out. Exits
with COMMAND's status.
"""
import os
import subprocess
import sys
import time

HZ = os.sysconf("SC_CLK_TCK")


def stat(path):
    try:
        with open(path) as f:
            s = f.read()
    except OSError:
        return None
    comm = s[s.index("(") + 1 : s.rindex(")")]
    rest = s[s.rindex(")") + 2 :].split()
    # rest[0] is field 3 (state): utime is field 14, stime 15, ppid 4.
    return comm, int(rest[1]), int(rest[11]), int(rest[12])


def tree(root):
    kids = {}
    for p in os.listdir("/proc"):
        if p.isdigit():
            st = stat(f"/proc/{p}/stat")
            if st:
                kids.setdefault(st[1], []).append(int(p))
    out, todo = [], [root]
    while todo:
        p = todo.pop()
        out.append(p)
        todo.extend(kids.get(p, []))
    return out


def main():
    out, cmd = sys.argv[1], sys.argv[sys.argv.index("--") + 1 :]
    child = subprocess.Popen(cmd)
    threads, procs = {}, {}
    pids, n = [], 0
    while child.poll() is None:
        if n % 5 == 0:
            pids = tree(child.pid)
        n += 1
        for pid in pids:
            p = stat(f"/proc/{pid}/stat")
            if not p:
                continue
            procs[pid] = (p[0], p[2], p[3])
            try:
                tids = os.listdir(f"/proc/{pid}/task")
            except OSError:
                continue
            for tid in tids:
                t = stat(f"/proc/{pid}/task/{tid}/stat")
                if t:
                    threads[(pid, int(tid))] = (p[0], t[0], t[2], t[3])
        time.sleep(0.05)
    sums = {}
    for (pid, _), (pc, tc, u, s) in threads.items():
        a = sums.setdefault((pc, tc), [0, 0])
        a[0] += u
        a[1] += s
    for pid, (pc, u, s) in procs.items():
        tu = sum(v[2] for k, v in threads.items() if k[0] == pid)
        ts = sum(v[3] for k, v in threads.items() if k[0] == pid)
        a = sums.setdefault((pc, "(exited threads)"), [0, 0])
        a[0] += max(0, u - tu)
        a[1] += max(0, s - ts)
    me = os.times()
    with open(out, "w") as f:
        f.write(f"(sampler) self {me.user:.2f} {me.system:.2f}\n")
        for (pc, tc), (u, s) in sorted(sums.items()):
            f.write(f"{pc.replace(' ', '_')} {tc.replace(' ', '_')} {u / HZ:.2f} {s / HZ:.2f}\n")
    sys.exit(child.returncode)


main()
