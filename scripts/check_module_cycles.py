#!/usr/bin/env python3
"""Fails when modules of one crate import each other in a circle.

A module is a file (or an inline `mod x { .. }`, folded into its file) of a
crate's `src/`; `mod tests` blocks are left out. There is an edge A -> B when
A names an item of B: `use` lines and paths in code (`crate::b::X`,
`super::X`, `self::b::X`, or a child module's name `b::X`). A parent that
declares a child does not depend on it by that alone. Any strongly connected
set of two or more modules is a cycle, printed with one edge of each.

    scripts/check_module_cycles.py [CRATE_SRC_DIR ...]   (default: every crate's src/)
"""
import os
import re
import sys

PATH_RE = re.compile(r"\b((?:crate|super|self|[a-z_][a-z0-9_]*)(?:\s*::\s*(?:[A-Za-z_][A-Za-z0-9_]*|\{))+)")
USE_RE = re.compile(r"\buse\s+([^;]+);", re.S)


def strip_comments_and_strings(src):
    src = re.sub(r"//[^\n]*", "", src)
    src = re.sub(r"/\*.*?\*/", "", src, flags=re.S)
    src = re.sub(r'r#*"(?:.|\n)*?"#*', '""', src)
    src = re.sub(r'"(?:\\.|[^"\\])*"', '""', src)
    return src


def strip_test_modules(src):
    """Drops `#[cfg(test)] mod NAME { ... }` blocks (brace-matched)."""
    out, i = [], 0
    pat = re.compile(r"#\[cfg\(test\)\]\s*(?:pub(?:\([^)]*\))?\s+)?mod\s+\w+\s*\{")
    while True:
        m = pat.search(src, i)
        if not m:
            out.append(src[i:])
            return "".join(out)
        out.append(src[i:m.start()])
        depth, j = 1, m.end()
        while j < len(src) and depth:
            depth += {"{": 1, "}": -1}.get(src[j], 0)
            j += 1
        i = j


def module_files(src_dir):
    """Maps module path tuples to files, following `mod x;` declarations."""
    mods = {}

    def visit(path, file, is_dir_owner):
        mods[path] = file
        text = strip_test_modules(strip_comments_and_strings(open(file).read()))
        base = os.path.dirname(file) if is_dir_owner else os.path.splitext(file)[0]
        for m in re.finditer(r"(?m)^\s*(?:pub(?:\([^)]*\))?\s+)?mod\s+([a-z_][a-z0-9_]*)\s*;", text):
            name = m.group(1)
            for cand, owner in ((os.path.join(base, name + ".rs"), False), (os.path.join(base, name, "mod.rs"), True)):
                if os.path.exists(cand):
                    visit(path + (name,), cand, owner)
                    break

    for root in ("lib.rs", "main.rs"):
        f = os.path.join(src_dir, root)
        if os.path.exists(f):
            visit((), f, True)
    return mods


def expand_use(tree):
    """`a::{b, c::d}` -> ['a::b', 'a::c::d'] (globs and renames kept as plain paths)."""
    tree = re.sub(r"\s+as\s+\w+", "", tree)
    tree = re.sub(r"\s+", "", tree)

    def split_top(s):
        parts, depth, cur = [], 0, ""
        for ch in s:
            if ch == "," and depth == 0:
                parts.append(cur)
                cur = ""
                continue
            depth += ch == "{"
            depth -= ch == "}"
            cur += ch
        if cur:
            parts.append(cur)
        return parts

    def go(prefix, s):
        i = s.find("{")
        if i < 0:
            return [prefix + s]
        head, body = s[:i], s[i + 1:s.rfind("}")]
        out = []
        for p in split_top(body):
            out += go(prefix + head, p)
        return out

    return go("", tree)


def resolve(cur, path, mods):
    parts = [p for p in path.split("::") if p and p != "{"]
    if not parts:
        return None
    if parts[0] == "crate":
        base, rest = (), parts[1:]
    elif parts[0] in ("super", "self"):
        base = cur
        while parts and parts[0] in ("super", "self"):
            if parts[0] == "super":
                base = base[:-1]
            parts = parts[1:]
        rest = parts
    elif cur + (parts[0],) in mods:
        base, rest = cur, parts
    else:
        return None
    target = base
    for p in rest:
        if target + (p,) in mods:
            target = target + (p,)
        else:
            break
    return target


def edges_of(mods):
    edges = {}
    for path, file in mods.items():
        text = strip_test_modules(strip_comments_and_strings(open(file).read()))
        names = []
        for m in USE_RE.finditer(text):
            names += expand_use(m.group(1))
        body = USE_RE.sub("", text)
        names += [re.sub(r"\s+", "", m.group(1)) for m in PATH_RE.finditer(body)]
        for n in names:
            t = resolve(path, n, mods)
            if t is not None and t != path:
                edges.setdefault(path, {}).setdefault(t, n)
    return edges


def sccs(nodes, edges):
    index, low, stack, on, out, n = {}, {}, [], set(), [], [0]

    def strong(v):
        index[v] = low[v] = n[0]
        n[0] += 1
        stack.append(v)
        on.add(v)
        for w in edges.get(v, {}):
            if w not in index:
                strong(w)
                low[v] = min(low[v], low[w])
            elif w in on:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            comp = []
            while True:
                w = stack.pop()
                on.discard(w)
                comp.append(w)
                if w == v:
                    break
            out.append(comp)

    sys.setrecursionlimit(10000)
    for v in nodes:
        if v not in index:
            strong(v)
    return out


def name(crate, path):
    return crate + ("::" + "::".join(path) if path else "")


def main():
    repo = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    dirs = sys.argv[1:] or [os.path.join(repo, "src")] + sorted(
        os.path.join(repo, d, "src") for d in os.listdir(repo) if os.path.isfile(os.path.join(repo, d, "Cargo.toml"))
    )
    bad = 0
    for d in dirs:
        owner = os.path.dirname(os.path.abspath(d))
        crate = "switchyard" if owner == repo else os.path.basename(owner)
        mods = module_files(d)
        edges = edges_of(mods)
        for comp in sccs(list(mods), edges):
            if len(comp) < 2:
                continue
            bad += 1
            members = set(comp)
            print(f"cycle in {crate}: " + ", ".join(sorted(name(crate, c) for c in comp)))
            for a in sorted(comp):
                for b, via in sorted(edges.get(a, {}).items()):
                    if b in members:
                        print(f"    {name(crate, a)} -> {name(crate, b)}   (via {via})")
        cyclic = any(len(c) > 1 for c in sccs(list(mods), edges))
        print(f"{crate}: {len(mods)} modules, {'CYCLES' if cyclic else 'no cycles'}")
    sys.exit(1 if bad else 0)


if __name__ == "__main__":
    main()
