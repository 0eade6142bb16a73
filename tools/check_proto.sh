#!/usr/bin/env bash
# Checks the contracts: buf lint, buf format, breaking changes against main
# (when main has a proto/ tree to compare with) and freshness of the generated
# Python code in libs/contracts.
#
#   tools/check_proto.sh
#   PROTO_AGAINST=HEAD~1 tools/check_proto.sh   # compare with another git ref
#
# Needs node (buf comes from npm: installed here with `npm ci` when missing) and
# the workspace Python environment (grpcio-tools, mypy-protobuf).
set -euo pipefail

cd "$(dirname "$0")/.."

if [[ ! -x node_modules/.bin/buf ]]; then
  npm ci --no-audit --no-fund --loglevel=error
fi
buf=node_modules/.bin/buf
python=${PYTHON:-}
if [[ -z "$python" ]]; then
  if [[ -x .venv/bin/python ]]; then python=.venv/bin/python; else python=python3; fi
fi

echo "==> buf lint"
"$buf" lint

echo "==> buf format"
"$buf" format -d --exit-code

# On a branch, compare with main; on main itself (CI's clone), with what main was
# before the newest commit (origin/main when this clone has a remote).
if [[ -n "${PROTO_AGAINST:-}" ]]; then
  against=$PROTO_AGAINST
elif [[ "$(git rev-parse --abbrev-ref HEAD)" != main ]]; then
  against=main
elif git rev-parse --verify --quiet origin/main >/dev/null &&
  [[ "$(git rev-parse origin/main)" != "$(git rev-parse HEAD)" ]]; then
  against=origin/main
else
  against=HEAD~1
fi
if git rev-parse --verify --quiet "${against}^{commit}" >/dev/null &&
  git cat-file -e "${against}:buf.yaml" 2>/dev/null &&
  git cat-file -e "${against}:proto" 2>/dev/null; then
  echo "==> buf breaking (against ${against})"
  "$buf" breaking --against ".git#ref=$(git rev-parse "${against}^{commit}")"
else
  echo "==> buf breaking: skipped (${against} has no buf.yaml and proto/ yet)"
fi

echo "==> generated code"
"$python" tools/gen_proto.py --check
