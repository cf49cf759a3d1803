#!/usr/bin/env bash
# The folder-level dependency graph of src/, and a check that it has no cycles.
#
#   tools/include_graph.sh [BUILD_DIR]
#
# An arrow A -> B means a file of src/A includes a header of src/B or, when a
# build directory is given, an object file of src/A references a symbol that an
# object file of src/B defines (nm), which also catches calls made through
# declarations in the top-level src/rilq.h. It prints one line per folder, then
# checks the rules below and exits 1 when one is broken (0 when the graph is
# clean, 2 on a usage error).
#
# Rules:
#   - no cycles between folders, apart from the known file-level exceptions
#     listed in KNOWN: each is an arrow from one file that points up (its folder
#     mixes two levels); they are printed as (known) and left out of the cycle
#     search, so any new arrow that closes a cycle fails;
#   - the arrows in FORBIDDEN never exist, exceptions or not: the op table
#     (backend) knows no model, the model builds no files and loads none
#     (io and load sit above model), the readers (io) never call the format
#     dispatch (load) that calls them.
set -euo pipefail

root=$(cd "$(dirname "$0")/.." && pwd)
src=$root/src
build=${1:-}
if [ -n "$build" ] && [ ! -d "$build" ]; then
  echo "include_graph: $build is not a directory" >&2
  exit 2
fi

# "file dir": arrows from a file that are allowed to point up, and why.
KNOWN=(
  # forward applies the attached adapters; adapter/adapter.c's math sits below the
  # forward pass, its PEFT files and merge.c above it
  "model/forward.c adapter"
  # the whole-model quantizer (quant/quantize_model.*) sits above model, the q2
  # format (quant/q2.*) below it
  "quant/quantize_model.h model"
  "quant/quantize_model.c model"
)
FORBIDDEN=(
  "backend model"
  "model io"
  "model load"
  "io load"
)

edges=$(mktemp)
trap 'rm -f "$edges"' EXIT

# includes: "file target-folder"
for f in "$src"/*/*.c "$src"/*/*.h; do
  rel=${f#"$src"/}
  dir=${rel%%/*}
  sed -n 's/^[[:space:]]*#[[:space:]]*include[[:space:]]*"\([^"]*\)".*/\1/p' "$f" | while read -r inc; do
    case $inc in
      ../*/*) target=${inc#../}; target=${target%%/*} ;;
      */*) continue ;; # a path from the include root (kernels/): not a folder of src
      *) [ -e "$src/$dir/$inc" ] || continue; target=$dir ;;
    esac
    if [ -d "$src/$target" ] && [ "$target" != "$dir" ]; then echo "$rel $target"; fi
  done
done >>"$edges"

# symbols: "file target-folder" from the library's and the command's object files
if [ -n "$build" ]; then
  # only objects whose source still exists (a build directory keeps those of renamed files)
  objs=$(find "$build" -path '*/src/*/*.c.o' 2>/dev/null | sort | while read -r o; do
    rel=${o##*/src/}
    if [ -f "$src/${rel%.o}" ]; then echo "$o"; fi
  done)
  if [ -z "$objs" ]; then
    echo "include_graph: no object files of src/ under $build (build it first)" >&2
    exit 2
  fi
  # shellcheck disable=SC2086
  nm -A $objs 2>/dev/null | awk '
    { n = split($1, p, "/"); file = p[n - 1] "/" p[n]; sub(/\.o:$/, "", file); sub(/:$/, "", file)
      dir = p[n - 1]
      if ($2 == "U") { use[file, $3] = 1; users[file] = 1 }
      else if (NF >= 3 && $2 ~ /^[TDBRCV]$/) def[$3] = dir }
    END { for (k in use) { split(k, q, SUBSEP); if ((q[2] in def) && def[q[2]] != substr(q[1], 1, index(q[1], "/") - 1))
            print q[1], def[q[2]] } }' >>"$edges"
fi

sort -u "$edges" -o "$edges"

known_list=$(printf '%s\n' "${KNOWN[@]}")
forbidden_list=$(printf '%s\n' "${FORBIDDEN[@]}")

awk -v known="$known_list" -v forbidden="$forbidden_list" -v folders="$(cd "$src" && ls -d */ | tr -d / | tr '\n' ' ')" '
  BEGIN {
    nk = split(known, kl, "\n"); for (i = 1; i <= nk; i++) if (kl[i] != "") is_known[kl[i]] = 1
    nf = split(forbidden, fl, "\n"); for (i = 1; i <= nf; i++) if (fl[i] != "") is_forbidden[fl[i]] = 1
    nn = split(folders, node, " ")
  }
  { file = $1; to = $2; from = substr(file, 1, index(file, "/") - 1)
    edge[from, to] = 1
    if ((file " " to) in is_known) used_known[file " " to] = 1
    else { strict[from, to] = 1; why[from, to] = why[from, to] " " file } }
  END {
    for (i = 1; i <= nn; i++) {
      line = sprintf("%-10s ->", node[i])
      for (j = 1; j <= nn; j++) if ((node[i], node[j]) in edge)
        line = line " " node[j] (((node[i], node[j]) in strict) ? "" : " (known)")
      print line
    }
    bad = 0
    for (k in is_forbidden) { split(k, e, " ")
      if ((e[1], e[2]) in edge) { print "FORBIDDEN: " e[1] " -> " e[2] " (" (((e[1], e[2]) in why) ? why[e[1], e[2]] : " a known exception") " )"; bad = 1 } }
    # transitive closure of the strict arrows (a few folders: Floyd-Warshall is enough)
    for (a in strict) reach[a] = 1
    for (k = 1; k <= nn; k++) for (i = 1; i <= nn; i++) if ((node[i], node[k]) in reach)
      for (j = 1; j <= nn; j++) if ((node[k], node[j]) in reach) reach[node[i], node[j]] = 1
    for (i = 1; i <= nn; i++) for (j = i + 1; j <= nn; j++)
      if ((node[i], node[j]) in reach && (node[j], node[i]) in reach) {
        print "CYCLE: " node[i] " and " node[j] " reach each other"
        if ((node[i], node[j]) in strict) print "  " node[i] " -> " node[j] ":" why[node[i], node[j]]
        if ((node[j], node[i]) in strict) print "  " node[j] " -> " node[i] ":" why[node[j], node[i]]
        bad = 1
      }
    for (k in is_known) if (!(k in used_known)) print "note: the known exception \"" k "\" no longer exists: remove it from KNOWN"
    if (bad) { print "include_graph: the layering is broken (see tools/include_graph.sh)"; exit 1 }
    print "include_graph: no cycles, no forbidden arrows"
  }' "$edges"
