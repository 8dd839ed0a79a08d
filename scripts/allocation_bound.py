"""Best per-layer allocation under `mask{allocate=sensitivity}`'s error model (squared errors add,
linear between measured levels) for char_lm's Wanda curves, against uniform sparsity.

The curves are the output of
  sparsify-onnx sensitivity tests/data/models/char_lm/model.onnx --calib tests/data/models/char_lm/calib \
      --levels '0.25|0.5|0.6|0.7|0.8|0.9|0.95'
(2026-12-07). The optimum is found by a Lagrangian sweep over a 0.005 grid of per-layer sparsities.
Run: python3 scripts/allocation_bound.py   (numpy)
"""
import numpy as np
lv=[0,0.25,0.5,0.6,0.7,0.8,0.9,0.95]
cl={ # char_lm, Wanda: weight -> (elements, errors at lv[1:])
'243':(49152,[0.0574,0.1952,0.3114,0.4010,0.4982,0.6048,0.6558]),
'257':(16384,[0.0336,0.1117,0.1514,0.2144,0.2995,0.4388,0.5545]),
'258':(65536,[0.0333,0.1079,0.1540,0.2125,0.2920,0.3783,0.4237]),
'259':(65536,[0.0225,0.0699,0.0995,0.1417,0.1918,0.2756,0.3371]),
'260':(49152,[0.0367,0.1101,0.1612,0.2223,0.2992,0.3891,0.4173]),
'274':(16384,[0.0241,0.0728,0.1037,0.1368,0.1882,0.2641,0.3201]),
'275':(65536,[0.0394,0.1154,0.1600,0.2159,0.2981,0.4087,0.4796]),
'276':(65536,[0.0207,0.0777,0.1183,0.1661,0.2354,0.3332,0.3985]),
'277':(12288,[0.0451,0.1604,0.2438,0.3597,0.5190,0.7190,0.8336])}
def e2(errs,s):
    e=[0]+errs; return np.interp(s,lv,np.array(e)**2)
N=sum(v[0] for v in cl.values())
def uniform_err(S): return np.sqrt(sum(e2(v[1],S) for v in cl.values()))
# optimal allocation via fine grid greedy on marginal e2 per element (convex assumption, use fine steps)
def best_err(S):
    grid=np.linspace(0,0.95,191)
    # Lagrangian: for each lambda choose s_l minimizing e2_l(s)-lambda*n_l*s ; bisection on lambda
    lo,hi=0,1e-3
    def alloc(lam):
        ss=[];tot=0
        for n,errs in cl.values():
            c=[e2(errs,s)-lam*n*s for s in grid]; s=grid[int(np.argmin(c))]; ss.append(s); tot+=n*s
        return ss,tot/N
    for _ in range(60):
        mid=(lo+hi)/2
        ss,t=alloc(mid)
        if t<S: lo=mid
        else: hi=mid
    ss,t=alloc(hi)
    return np.sqrt(sum(e2(v[1],s) for v,s in zip(cl.values(),ss))),t
for S in [0.3,0.359,0.4,0.45,0.5,0.539]:
    b,t=best_err(S)
    print(f"S={S:.3f} uniform pred {uniform_err(S):.3f}  best-alloc pred {b:.3f} (at {t:.3f})")
