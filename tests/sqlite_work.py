#!/usr/bin/env python3
"""SQLite workload for tests/sqlite.rs: several processes using one database file at once.

Every row belongs to a class (key % CLASSES), and only that class's writer changes it, so the
final contents are a function of the seed alone, whatever the interleaving. Each transaction
moves an amount between two rows of its class, so every class always sums to the same total:
a reader that sees a class off that total saw a torn, stale or lost page.

  init DB MODE ROWS SEED           make the database (journal_mode MODE), ROWS rows
  writer DB CLASS OPS SEED ROWS    OPS transactions on one class
  reader DB ROWS MMAP STOP [ro]    check every class's sum (and quick_check) until file STOP
                                   exists, then print what dump prints, after "final ";
                                   MMAP > 0 reads through a mapping of the file; ro opens
                                   the file read-only and says "ready" on stdout first
  vacuum DB STOP                   VACUUM (rewrites the whole file) until STOP exists
  dump DB                          integrity_check, row count and a hash of every row
  writers OPS SEED ROWS DB...      CLASSES writer processes on each DB at once, then print
                                   "ok" if every one succeeded and every DB passes
                                   integrity_check (scripts/bench.sh times this)
"""
import hashlib
import os
import random
import sqlite3
import subprocess
import sys
import time

CLASSES = 4
START = 1000


def blob(rng, lo=64, hi=3000):
    return rng.randbytes(rng.randint(lo, hi))


def connect(db, mmap=0, ro=False):
    uri = f"file:{db}?mode=ro" if ro else f"file:{db}"
    c = sqlite3.connect(uri, uri=True, timeout=120, isolation_level=None)
    c.execute("PRAGMA busy_timeout=120000")
    if mmap:
        c.execute(f"PRAGMA mmap_size={mmap}")
    return c


def class_totals(rows):
    t = {}
    for k in range(rows):
        t[k % CLASSES] = t.get(k % CLASSES, 0) + START
    return t


def init(db, mode, rows, seed):
    rng = random.Random(seed)
    c = sqlite3.connect(db, isolation_level=None)
    c.execute("PRAGMA page_size=4096")
    got = c.execute(f"PRAGMA journal_mode={mode}").fetchone()[0]
    if got.lower() != mode.lower():
        sys.exit(f"journal_mode {mode} refused: {got}")
    c.execute("CREATE TABLE kv(k INTEGER PRIMARY KEY, v BLOB NOT NULL, n INTEGER NOT NULL)")
    c.execute("BEGIN")
    c.executemany("INSERT INTO kv VALUES(?,?,?)", ((k, blob(rng), START) for k in range(rows)))
    c.execute("COMMIT")
    c.close()


def writer(db, cls, ops, seed, rows):
    rng = random.Random(seed * 1009 + cls)
    keys = [k for k in range(rows) if k % CLASSES == cls]
    nxt = rows - rows % CLASSES + CLASSES + cls
    c = connect(db)
    for _ in range(ops):
        c.execute("BEGIN IMMEDIATE")
        r = rng.random()
        a, b = rng.sample(keys, 2)
        amt = rng.randint(1, 50)
        if r < 0.55:
            c.execute("UPDATE kv SET n = n - ? WHERE k = ?", (amt, a))
            c.execute("UPDATE kv SET n = n + ? WHERE k = ?", (amt, b))
        elif r < 0.85:
            # A new value of another size: pages split, merge and overflow.
            c.execute("UPDATE kv SET v = ?, n = n - ? WHERE k = ?", (blob(rng, 16, 6000), amt, a))
            c.execute("UPDATE kv SET n = n + ? WHERE k = ?", (amt, b))
        elif r < 0.97:
            # The row moves to a new key, its amount with it.
            (n,) = c.execute("SELECT n FROM kv WHERE k = ?", (a,)).fetchone()
            c.execute("DELETE FROM kv WHERE k = ?", (a,))
            c.execute("INSERT INTO kv VALUES(?,?,?)", (nxt, blob(rng), n))
            keys.remove(a)
            keys.append(nxt)
            nxt += CLASSES
        else:
            # A big transaction: a journal or WAL of many pages.
            for k in rng.sample(keys, min(150, len(keys))):
                c.execute("UPDATE kv SET v = ? WHERE k = ?", (blob(rng), k))
        c.execute("COMMIT")
    c.close()


def reader(db, rows, mmap, stop, ro):
    want = class_totals(rows)
    c = connect(db, mmap, ro)
    if ro:
        c.execute("SELECT count(*) FROM kv").fetchone()
        print("ready", flush=True)
    n = 0
    while n < 5 or not os.path.exists(stop):
        c.execute("BEGIN")
        got = dict(c.execute("SELECT k % ?, sum(n) FROM kv GROUP BY 1", (CLASSES,)).fetchall())
        check = c.execute("PRAGMA quick_check").fetchone()[0] if n % 8 == 0 else "ok"
        c.execute("COMMIT")
        if got != want:
            sys.exit(f"reader {db} (mmap {mmap}, ro {ro}) pass {n}: class sums {got}, want {want}")
        if check != "ok":
            sys.exit(f"reader {db} (mmap {mmap}, ro {ro}) pass {n}: quick_check: {check}")
        n += 1
    # Every writer is done: this connection must see their last commits too.
    print(f"passes {n}")
    print(f"final {summary(c)}")


def vacuum(db, stop):
    c = connect(db)
    n = 0
    while n < 1 or not os.path.exists(stop):
        c.execute("VACUUM")
        n += 1
        time.sleep(0.2)
    print(f"vacuums {n}")


def summary(c):
    """integrity_check, row count and a hash of every row, as seen by connection c."""
    check = "/".join(r[0] for r in c.execute("PRAGMA integrity_check").fetchall())
    h = hashlib.sha256()
    count = 0
    for k, v, n in c.execute("SELECT k, v, n FROM kv ORDER BY k"):
        h.update(f"{k}:{n}:{len(v)}:".encode())
        h.update(v)
        count += 1
    return f"integrity {check} rows {count} sha256 {h.hexdigest()}"


def dump(db):
    print(summary(connect(db)))


def writers(ops, seed, rows, dbs):
    procs = [
        subprocess.Popen([sys.executable, __file__, "writer", db, str(c), str(ops), str(seed), str(rows)])
        for db in dbs
        for c in range(CLASSES)
    ]
    failed = sum(p.wait() != 0 for p in procs)
    if failed:
        sys.exit(f"{failed} writer(s) failed")
    for db in dbs:
        check = connect(db).execute("PRAGMA integrity_check").fetchone()[0]
        if check != "ok":
            sys.exit(f"{db}: integrity_check: {check}")
    print("ok")


def main(a):
    cmd = a[0]
    if cmd == "init":
        init(a[1], a[2], int(a[3]), int(a[4]))
    elif cmd == "writer":
        writer(a[1], int(a[2]), int(a[3]), int(a[4]), int(a[5]))
    elif cmd == "reader":
        reader(a[1], int(a[2]), int(a[3]), a[4], len(a) > 5 and a[5] == "ro")
    elif cmd == "vacuum":
        vacuum(a[1], a[2])
    elif cmd == "writers":
        writers(int(a[1]), int(a[2]), int(a[3]), a[4:])
    elif cmd == "dump":
        dump(a[1])
    else:
        sys.exit(f"unknown command {cmd}")


if __name__ == "__main__":
    main(sys.argv[1:])
