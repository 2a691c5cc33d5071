"""EXPERIMENT (reverted in the next commit): bench/resilience.py on the causal scenarios only, pooled from the printed table, with agent diagnostics (DIAG, DIAG2, DIAG3)."""
import sys, json, io, contextlib
sys.path.insert(0, "bench")
import resilience as R
fleets = []
_orig = R.AgentFleet.__init__
def init(self, *a, **k):
    _orig(self, *a, **k); fleets.append(self)
R.AgentFleet.__init__ = init
argv = sys.argv[1:]
ap_args = argv + ["--scenarios", "dependency", "thermal", "congestion"]
buf = io.StringIO()
with contextlib.redirect_stdout(buf):
    R.main(ap_args)
# re-run? no: collect results by parsing table
lines = buf.getvalue().splitlines()
res = {}
for l in lines:
    f = l.split()
    if len(f) >= 10 and f[2] != "runs" and f[1] in ("agent", "step-functions") and f[0] in R.CAUSAL:
        res[(f[0], f[1])] = dict(c=float(f[2]), mttr=float(f[4]), rec=int(f[5]), unrec=int(f[6]), wasted=int(f[7]))
out = {}
for p in ("agent", "step-functions"):
    fs = [res[(n, p)] for n in R.CAUSAL]
    inc = sum(x["rec"] + x["unrec"] for x in fs)
    out[p] = dict(c=round(sum(x["c"] for x in fs) / 3, 4), mttr=round(sum(x["mttr"] * (x["rec"] + x["unrec"]) for x in fs) / inc, 2),
                  wasted=sum(x["wasted"] for x in fs), per=[x["c"] for x in fs], mttrs=[x["mttr"] for x in fs])
print([l for l in lines if "not completed" in l and "agent" in l])
print("prices", [round(f.agent.completion_price, 3) for f in fleets])
a, s = out["agent"], out["step-functions"]
print(f"SEED {argv} completion {a['c']} vs {s['c']} {'OK' if a['c'] > s['c'] else 'MISS'} per {a['per']} vs {s['per']}; "
      f"MTTR {a['mttr']} vs {s['mttr']} ratio {a['mttr']/s['mttr']:.3f} {'OK' if a['mttr']/s['mttr'] <= 0.7 else 'MISS'} per {a['mttrs']} vs {s['mttrs']}; wasted {a['wasted']} vs {s['wasted']}")
import os
if os.environ.get("DIAG"):
    for name, f in zip(R.CAUSAL, fleets):
        ag = f.agent
        print("==", name, "gap", ag.completion_gap())
        for st, counts in sorted(ag.visits.items(), key=lambda kv: -sum(kv[1].values())):
            if "*" not in st or st.split("|")[2] != "1" or st.split("|")[4] != "1":
                continue
            ch = ag.predict_one(st, explore=False, min_visits=0)
            print(f"  {st} n={sum(counts.values())} choice={ch} C={ag.completion[st].get(ch, None) if ch else None} "
                  f"static={ag.static_completion.get(st)} ref={R.__dict__.get('x')} " +
                  " ".join(f"{a}:{counts[a]}:q{ag.q[st][a]:.2f}:c{ag.completion.get(st, {}).get(a, float('nan')):.2f}" for a in counts))
if os.environ.get("DIAG2"):
    for name, f in zip(R.CAUSAL, fleets):
        ag = f.agent
        print("== gap terms", name)
        for st, counts in sorted(ag.visits.items(), key=lambda kv: -sum(kv[1].values())):
            if "*" not in st or st.split("|")[2] != "1" or st not in ag.static_completion:
                continue
            ch = ag.predict_one(st, explore=False, min_visits=0)
            n = sum(counts.values())
            print(f"  {st} n={n} {ch} C={ag.completion[st].get(ch, 0):.2f} static={ag.static_completion[st]:.2f} term={n*(ag.completion[st].get(ch, 0)-ag.static_completion[st]):.1f}")
if os.environ.get("DIAG3"):
    for name, f in zip(R.CAUSAL, fleets):
        rp = f.graph.recovery_parents([])
        print("== parents", name, {k: v for k, v in rp.items()})
