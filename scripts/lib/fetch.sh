# Shared by the dataset download scripts: defines `fetch URL FILE` with curl (or wget), and checks that
# unzip is present; exits 2 with the package to install when a tool is missing.
# Usage: . scripts/lib/fetch.sh [resume]   ("resume": continue a partial FILE instead of starting over;
# only for servers that answer range requests)
need() { command -v "$1" >/dev/null 2>&1; }
if need curl; then
  if [ "${1:-}" = resume ]; then fetch() { curl -fL --retry 3 -C - -o "$2" "$1"; }
  else fetch() { curl -fL --retry 3 -o "$2" "$1"; }; fi
elif need wget; then
  if [ "${1:-}" = resume ]; then fetch() { wget -c -O "$2" "$1"; }
  else fetch() { wget -O "$2" "$1"; }; fi
else
  echo "error: neither curl nor wget is installed; install one (e.g. apt-get install curl)" >&2
  exit 2
fi
if ! need unzip; then
  echo "error: unzip is not installed; install it (e.g. apt-get install unzip)" >&2
  exit 2
fi
