#!/usr/bin/env bash
# Builds the console without cargo-leptos: the server binary, and its browser half into
# the site directory the server serves it from (`--site-root`).
#   scripts/build-site.sh            debug build into target/site-debug (the end-to-end tests)
#   scripts/build-site.sh --release  release build into target/site (the demo)
#
# The wasm is built for wasm32-unknown-unknown, bound by wasm-bindgen (the version in
# Cargo.lock) and, in a release build, optimised by wasm-opt -Oz. wasm-opt takes a minute
# or more, so its output is kept in target/site-cache under the hash of its input: a build
# whose wasm did not change skips it. The JS glue, the wasm and the style sheet are named
# by one hash of their contents (etc-shadow.<hash>.js, etc-shadow.<hash>_bg.wasm,
# etc-shadow.<hash>.css), so browsers may cache them for good; each also gets a brotli
# (.br) and a gzip (.gz) copy that the server sends to browsers that accept them.
# <site>/pkg/current names the set a server starting now serves; the sets before it are
# kept (the newest three), so a server already running keeps finding its own. Debug and
# release builds have their own site directories: their halves are built with different
# flags and must not be mixed.
set -euo pipefail
cd "$(dirname "$0")/.."
mkdir -p target
# One build at a time (a demo and a test run started together share target/).
exec 9>target/.build-site.lock
flock 9

release=false
[ "${1:-}" = "--release" ] && release=true
if $release; then
  # Components' types erased (leptos's `erase_components`) on both halves, which must
  # agree: the wasm is 40% smaller. `make` passes the same flags to every release build,
  # so the agent's and the benchmark's builds share the dependencies.
  export RUSTFLAGS="${RUSTFLAGS:---cfg erase_components}"
  case "$RUSTFLAGS" in *erase_components*) ;; *) RUSTFLAGS="$RUSTFLAGS --cfg erase_components" ;; esac
  wasm_profile=wasm-release wasm_dir=wasm-release server_args=(--release) brotli_quality=11 site=target/site
else
  # A debug wasm is large; compressing it hard would take longer than building it.
  wasm_profile=dev wasm_dir=debug server_args=() brotli_quality=4 site=target/site-debug
fi

cargo build -p frontend --lib --target wasm32-unknown-unknown --profile "$wasm_profile"
cargo build "${server_args[@]}" -p etc-shadow-server --bin etc-shadow

pkg=$site/pkg
work=target/site-build
cache=target/site-cache
rm -rf "$work" && mkdir -p "$work" "$cache" "$pkg"
wasm-bindgen --target web --no-typescript --out-dir "$work" --out-name etc-shadow \
  "target/wasm32-unknown-unknown/$wasm_dir/frontend.wasm"
if $release; then
  key=$(sha256sum "$work/etc-shadow_bg.wasm" | cut -c1-64)
  if [ ! -f "$cache/$key.wasm" ]; then
    echo "[site] wasm-opt -Oz (its output is kept for the next build of the same wasm)"
    wasm-opt -Oz --enable-bulk-memory --enable-nontrapping-float-to-int \
      "$work/etc-shadow_bg.wasm" -o "$cache/$key.wasm.tmp"
    mv "$cache/$key.wasm.tmp" "$cache/$key.wasm"
    # Only the newest few are worth keeping.
    ls -t "$cache"/*.wasm | tail -n +6 | xargs -r rm -f
  fi
  cp "$cache/$key.wasm" "$work/etc-shadow_bg.wasm"
fi
cp style/main.css "$work/etc-shadow.css"

hash=$(cat "$work/etc-shadow.js" "$work/etc-shadow_bg.wasm" "$work/etc-shadow.css" | sha256sum | cut -c1-16)
name=etc-shadow.$hash
if [ "$(cat "$pkg/current" 2>/dev/null)" = "$name" ] && [ -f "$pkg/${name}_bg.wasm.br" ] && [ -f "$pkg/${name}_bg.wasm.gz" ]; then
  rm -rf "$work"
  echo "[site] $pkg/$name is up to date"
  exit 0
fi
for file in "$work/etc-shadow.js" "$work/etc-shadow_bg.wasm" "$work/etc-shadow.css"; do
  brotli --quality="$brotli_quality" --keep --force "$file"
  gzip --best --keep --force --no-name "$file"
done
# Each file under its final name by a rename, then `current` (so a server starting now
# never names a file not there yet).
for suffix in .js .js.br .js.gz _bg.wasm _bg.wasm.br _bg.wasm.gz .css .css.br .css.gz; do
  mv "$work/etc-shadow$suffix" "$pkg/$name$suffix"
done
echo "$name" > "$pkg/current.tmp" && mv "$pkg/current.tmp" "$pkg/current"
rm -rf "$work"
# Older sets beyond the newest three go (a server started on one of them is that old).
ls -t "$pkg"/etc-shadow.*_bg.wasm | tail -n +4 | sed 's/_bg\.wasm$//' | while read -r old; do
  rm -f "$old".js* "$old"_bg.wasm* "$old".css*
done
wasm_bytes=$(stat -c %s "$pkg/${name}_bg.wasm")
br_bytes=$(stat -c %s "$pkg/${name}_bg.wasm.br")
gz_bytes=$(stat -c %s "$pkg/${name}_bg.wasm.gz")
echo "[site] $pkg/$name: wasm $wasm_bytes bytes, $gz_bytes gzip, $br_bytes brotli"
