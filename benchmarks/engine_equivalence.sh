#!/usr/bin/env bash
# The pack CLI of two checkouts on the same 10 modes: max abs difference of the embeddings
# and of every figure in report.json ("bitwise" when equal).
#   git worktree add /tmp/before b0f7a36      # e.g. the last commit before the one-engine change
#   bash benchmarks/engine_equivalence.sh /tmp/before .
# Run it without PYTHONPATH: each side imports the package of the checkout it runs in.
# n = 200, d = 32, a gallery of 300 random unit rows, alpha 0.5, 60 steps.
set -euo pipefail
before=$(cd "$1" && pwd); after=$(cd "$2" && pwd); work=$(mktemp -d)
python -c "
import numpy as np
g = np.random.default_rng(5).normal(size=(300, 32)).astype(np.float32)
np.save('$work/g.npy', g / np.linalg.norm(g, axis=1, keepdims=True))"
common="--num_identities=200 --dim=32 --gallery=$work/g.npy --alpha=0.5 --steps=60 --log_every=30
        --checkpoint_every=30 --progress=false --decay_every=20"
modes=("" "--packing_reduce=max" "--batch_size=50" "--batch_size=50 --minibatch_update=dense"
       "--objective=logsumexp --temperature_end=100"
       "--objective=riesz --packing_reduce=max --temperature_end=100"
       "--objective=logsumexp --neighbor_list_size=8 --neighbor_refresh_every=5"
       "--objective=logsumexp --restarts=3 --alpha=0 --gallery="
       "--polish_steps=10" "--project_gradient=false --optimizer=lamb")
for i in "${!modes[@]}"; do
  for side in before after; do
    tree=${!side}
    (cd "$tree" && JAX_PLATFORMS=cpu python -m hyperface_jax.pack $common ${modes[$i]} \
       --out_dir="$work/$side$i" > "$work/$side$i.log" 2>&1)
  done
  python -c "
import json, numpy as np
a, b = (np.load('$work/' + s + '$i/embeddings.npy') for s in ('before', 'after'))
fa, fb = (json.load(open('$work/' + s + '$i/report.json'))['figures'] for s in ('before', 'after'))
d = 'bitwise' if a.tobytes() == b.tobytes() else f'{np.abs(a - b).max():.2g}'
f = 'bitwise' if fa == fb else f'{max(abs(fa[k] - fb[k]) for k in fa):.2g}'
print(f'mode {$i} [${modes[$i]}]: embeddings {d}, figures {f}, max_cos {fa[\"max_cos\"]:.6f} vs {fb[\"max_cos\"]:.6f}')"
done
rm -rf "$work"
