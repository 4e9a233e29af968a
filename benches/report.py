#!/usr/bin/env python3
"""The benchmarks' figures in one table, against the goals, and in one JSON document.

    python3 benches/report.py DIR [PROFILE [NAME...]]

Reads DIR/bench-NAME.json (every benchmark, or the NAMEs given: the ones just run) (written by each `cargo bench --bench NAME`, see benches/run), prints
one line per measure (value, goal, met or by how much it is missed) and writes
DIR/bench-report.json: the date, this machine's cores, the commit, every benchmark's figures
as written, and the summary lines.
"""

import datetime
import json
import os
import subprocess
import sys


ONLY = None  # the benchmarks to report (None: every one found)


def load(d, name):
    if ONLY is not None and name not in ONLY:
        return None
    try:
        with open(os.path.join(d, f"bench-{name}.json")) as f:
            return json.load(f)
    except FileNotFoundError:
        return None


class Summary:
    def __init__(self):
        self.rows = []

    def add(self, bench, measure, value, unit, goal=None, ok=None, miss=""):
        """goal: text; ok: whether it is met; miss: by how much it is missed."""
        verdict = "" if goal is None else ("met" if ok else f"MISSED {miss}".rstrip())
        self.rows.append(
            {
                "benchmark": bench,
                "measure": measure,
                "value": value,
                "unit": unit,
                "goal": goal,
                "met": ok,
                "verdict": verdict,
            }
        )

    def below(self, bench, measure, value, unit, limit, fmt="{:.2f}"):
        ok = value <= limit
        miss = f"by {fmt.format(value - limit)} {unit} ({value / limit:.2f}x the goal)"
        self.add(bench, measure, value, unit, f"<= {fmt.format(limit)} {unit}", ok, miss)

    def at_least(self, bench, measure, value, unit, floor):
        ok = value >= floor
        miss = f"({value:.1f}{unit} where {floor:g}{unit} is the goal: {value / floor:.0%} of it)"
        self.add(bench, measure, value, unit, f">= {floor:g}{unit}", ok, miss)


def summarise(d):
    s = Summary()
    plan = load(d, "plan")
    for r in plan or []:
        total = r["parse_ms"] + r["plan_ms"]
        m = f"{r['hosts']} hosts: parse + plan"
        if r["hosts"] == 1000:
            s.below("plan", m, total, "ms", 100, "{:.1f}")
            s.below("plan", f"{r['hosts']} hosts: peak memory", r["peak_mb"], "MB", 50, "{:.1f}")
        else:
            s.add("plan", m, total, "ms")
            s.add("plan", f"{r['hosts']} hosts: peak memory", r["peak_mb"], "MB")
    fleet = load(d, "fleet")
    for r in fleet or []:
        full, noop = r["full"], r["noop"]
        n = full["hosts"]
        ratio = full["wall_seconds"] / full["ideal_seconds"]
        s.below("fleet", f"{n} simulated hosts: full up / ideal", ratio, "x", 1.2)
        s.add("fleet", f"{n} simulated hosts: no-op up (simulated)", noop["wall_seconds"], "s")
        s.add("fleet", f"{n} simulated hosts: real time of the simulated full up", full["real_seconds"], "s")
        if n >= 10000:
            s.below("fleet", f"{n} simulated hosts: peak memory", r["peak_mb"], "MB", 1024, "{:.0f}")
        else:
            s.add("fleet", f"{n} simulated hosts: peak memory", r["peak_mb"], "MB")
        per_write = full["state_bytes_written"] / max(full["state_commits"], 1)
        s.add("fleet", f"{n} simulated hosts: bytes per state write", per_write, "B")
    versus = load(d, "versus")
    for r in (versus or {}).get("rows", []):
        n = r["hosts"]
        cf, an = r["cloudflow"], r["ansible"]
        s.add("versus", f"{n} hosts: bootstrap, cloudflow", cf["bootstrap_seconds"], "s")
        s.add("versus", f"{n} hosts: bootstrap, ansible-playbook", an["bootstrap_seconds"], "s")
        s.add("versus", f"{n} hosts: bootstrap, ansible / cloudflow", r["bootstrap_ratio"], "x")
        s.add("versus", f"{n} hosts: no-op, ansible-playbook", an["noop_seconds"], "s")
        if n == 10:
            s.below("versus", f"{n} hosts: no-op, cloudflow", cf["noop_seconds"], "s", 0.5)
        else:
            s.add("versus", f"{n} hosts: no-op, cloudflow", cf["noop_seconds"], "s")
        s.at_least("versus", f"{n} hosts: no-op, ansible / cloudflow", r["noop_ratio"], "x", 20)
    up = load(d, "up")
    for r in up or []:
        n = r["hosts"]
        s.add("up", f"{n} lab hosts: first up", r["first_up_seconds"], "s")
        s.add("up", f"{n} lab hosts: no-op up", r["noop_up_seconds"], "s")
        s.add("up", f"{n} lab hosts: down", r["down_seconds"], "s")
    state = load(d, "state")
    if state:
        for store in ("embedded", "etcd"):
            s.add("state", f"no-op up of 3 lab hosts, {store} store", state[store]["noop_up_seconds"], "s")
    deploy = load(d, "deploy")
    if deploy:
        demo = deploy.get("demo")
        if demo:
            built = "images cached" if demo["images_cached"] else "images built in the run"
            s.add("deploy", f"fresh demo: first request answered ({built})", demo["first_request_seconds"], "s")
        s.add("deploy", "requests through the proxy during deploys", deploy["requests"], "")
        ok = deploy["failed"] == 0
        s.add("deploy", "  of which failed", deploy["failed"], "", "0", ok, f"by {deploy['failed']}")
        s.add("deploy", "switch (health ok -> proxies serving), median", deploy["switch_median_ms"], "ms")
        s.add("deploy", "request latency p99 during deploys", deploy["p99_ms"], "ms")
    hook = load(d, "hook")
    if hook:
        s.add("hook", "alert arrival -> scale command issued", hook["issue_latency_ms"], "ms")
        s.add("hook", "alert POST -> response (scaled, converged)", hook["acted_seconds"], "s")
        s.add("hook", "refused (cooldown) requests per second", hook["refused_rps"], "/s")
    return s


def fmt(v):
    if isinstance(v, float):
        return f"{v:.3f}" if abs(v) < 10 else f"{v:.1f}"
    return str(v)


def main():
    global ONLY
    d = sys.argv[1] if len(sys.argv) > 1 else "target/bench"
    profile = sys.argv[2] if len(sys.argv) > 2 else "dev"
    if len(sys.argv) > 3:
        ONLY = set(sys.argv[3:])
    s = summarise(d)
    try:
        commit = subprocess.run(
            ["git", "describe", "--always", "--dirty"], capture_output=True, text=True, check=True
        ).stdout.strip()
    except Exception:
        commit = "unknown"
    now = datetime.datetime.now(datetime.timezone.utc)
    head = f"cloudflow benchmarks, {now:%Y-%m-%d}, {os.cpu_count()} cores, commit {commit}, {profile} profile"
    print(head)
    w = max([len(r["measure"]) for r in s.rows] + [10])
    print(f"{'bench':<7} {'measure':<{w}} {'value':>10} {'unit':<4} {'goal':<12} verdict")
    for r in s.rows:
        print(
            f"{r['benchmark']:<7} {r['measure']:<{w}} {fmt(r['value']):>10} {r['unit']:<4} "
            f"{r['goal'] or '':<12} {r['verdict']}"
        )
    report = {
        "date": now.isoformat(timespec="seconds"),
        "cores": os.cpu_count(),
        "commit": commit,
        "profile": profile,
        "summary": s.rows,
        "benchmarks": {
            n: load(d, n) for n in ("plan", "fleet", "versus", "up", "state", "deploy", "hook")
        },
    }
    out = os.path.join(d, "bench-report.json")
    with open(out, "w") as f:
        json.dump(report, f, indent=2)
    print(f"\nwritten: {out}")
    missed = [r for r in s.rows if r["met"] is False]
    if missed:
        print(f"{len(missed)} goal(s) missed")


if __name__ == "__main__":
    main()
