#!/usr/bin/env python3
"""Builds the layer stacks for scripts/bench.sh (deterministic; run once per size set).

  gen.py meta   DIR NFILES          5 layers l0 (top) .. l4, NFILES visible files in 1000 dirs
  gen.py deep   DIR NLAYERS NFILES  layers 0 (top) .. NLAYERS-1; dir d/ in every layer,
                                    NFILES files only in the bottom layer
  gen.py rd     DIR NENTRIES        4 layers, one dir D with ~NENTRIES visible entries,
                                    whiteouts (char 0/0) in the upper three layers
  gen.py src    DIR NFILES MBYTES   a synthetic source tree (for the tar workload)
Each writes DIR/lowers (top-first, relative names) and, where useful, DIR/list (visible
files, relative to the merged root) and DIR/count (expected visible entry count).
"""
import os, random, stat, sys


def w(path, data=b""):
    with open(path, "wb") as f:
        f.write(data)


def whiteout(path):
    os.mknod(path, stat.S_IFCHR | 0o600, os.makedev(0, 0))


def meta(root, n):
    layers = 5
    per = n // layers
    dirs = [f"d{a:02d}/s{b:02d}" for a in range(50) for b in range(20)]
    visible = []
    for L in range(layers):
        for d in dirs:
            os.makedirs(f"{root}/l{L}/{d}", exist_ok=True)
        for j in range(per):
            d = dirs[j % len(dirs)]
            name = f"{d}/f{L}_{j}"
            w(f"{root}/l{L}/{name}", b"x" * (j % 200))
            visible.append(name)
    # the top layer also shadows 5% of the bottom layer's names (same path, new content)
    for j in range(0, per, 20):
        d = dirs[j % len(dirs)]
        w(f"{root}/l0/{d}/f{layers-1}_{j}", b"shadow")
    with open(f"{root}/lowers", "w") as f:
        f.write(":".join(f"l{L}" for L in range(layers)))
    with open(f"{root}/list", "w") as f:
        f.write("\n".join(visible) + "\n")
    with open(f"{root}/count", "w") as f:
        f.write(f"{len(visible) + len(dirs) + 50 + 1}\n")  # files + dirs + root, as find prints


def deep(root, nl, n):
    for i in range(nl):
        os.makedirs(f"{root}/{i}/d", exist_ok=True)
        w(f"{root}/{i}/d/x{i}")
    names = [f"d/f{j:05d}" for j in range(n)]
    for nm in names:
        w(f"{root}/{nl-1}/{nm}", b"bottom")
    with open(f"{root}/lowers", "w") as f:
        f.write(":".join(str(i) for i in range(nl)))
    with open(f"{root}/list", "w") as f:
        f.write("\n".join(names) + "\n")


def rd(root, n):
    layers = 4
    new_per = (n + 1500) // layers   # each layer adds this many names
    wh_per = 500                     # each of the upper 3 layers whites out 500 lower names
    alive = set()
    for L in reversed(range(layers)):  # bottom first
        os.makedirs(f"{root}/l{L}/D", exist_ok=True)
        if L < layers - 1:
            victims = sorted(alive)[: wh_per * 2 : 2]
            for v in victims:
                whiteout(f"{root}/l{L}/D/{v}")
                alive.discard(v)
        for j in range(new_per):
            nm = f"e{L}_{j:05d}"
            w(f"{root}/l{L}/D/{nm}")
            alive.add(nm)
    with open(f"{root}/lowers", "w") as f:
        f.write(":".join(f"l{L}" for L in range(layers)))
    with open(f"{root}/count", "w") as f:
        f.write(f"{len(alive)}\n")


def src(root, n, mbytes):
    rnd = random.Random(42)
    blob = rnd.randbytes(1 << 20)
    target = mbytes << 20
    # log-normal-ish sizes scaled to the byte budget
    raw = [rnd.lognormvariate(8.0, 1.2) for _ in range(n)]
    scale = target / sum(raw)
    ndirs = max(1, n // 40)
    for i in range(n):
        d = f"{root}/src/m{(i // 40) % ndirs // 30:03d}/p{(i // 40) % ndirs:04d}"
        if i % 40 == 0:
            os.makedirs(d, exist_ok=True)
        size = int(raw[i] * scale)
        off = rnd.randrange(0, len(blob))
        data = (blob[off:] + blob)[: size] if size <= len(blob) else (blob * (size // len(blob) + 1))[:size]
        w(f"{d}/file{i:06d}.c", data)


if __name__ == "__main__":
    kind, root, *args = sys.argv[1:]
    os.makedirs(root, exist_ok=True)
    {"meta": meta, "deep": deep, "rd": rd, "src": src}[kind](root, *map(int, args))
