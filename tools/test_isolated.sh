#!/usr/bin/env bash
# Runs each workspace member's tests in its own virtualenv holding only what the
# member declares (its dependencies and its dev group), so an undeclared import
# fails here even though the shared workspace venv would hide it.
set -euo pipefail
cd "$(dirname "$0")/.."

members=(
  "livedesk-platform libs/platform/tests"
  "livedesk-contracts libs/contracts/tests"
  "livedesk-assignment-client libs/assignment-client/tests"
  "livedesk-chat services/chat/tests"
  "livedesk-assignment services/assignment/tests"
  "livedesk-analytics services/analytics/tests"
)
for entry in "${members[@]}"; do
  read -r package tests <<<"$entry"
  venv=".venvs/${package}"
  echo "==> ${package}: ${tests} in ${venv}"
  UV_PROJECT_ENVIRONMENT="$venv" uv sync --quiet --frozen --package "$package" --exact
  "$venv/bin/python" -m pytest -p no:cacheprovider -q "$tests"
done
