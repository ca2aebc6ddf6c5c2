#!/usr/bin/env bash
# Seeds each target's corpus (fuzz/corpus/<target>/, not committed) from real
# inputs: the fixture bodies in testdata/, the YAML examples in the README,
# docs/ and terraform-examples/, and a few URLs. Run before `cargo fuzz run`; seeding
# again adds nothing that is already there.
set -euo pipefail
cd "$(dirname "$0")/.."
corpus=fuzz/corpus
mkdir -p "$corpus"/{route,lock_info,state_head,config}

# Bodies: every fixture feeds both body parsers.
for f in testdata/*.json testdata/*.tfstate; do
  [ -e "$f" ] || continue
  cp "$f" "$corpus/lock_info/"
  cp "$f" "$corpus/state_head/"
done
printf '%s' '{"version":4,"terraform_version":"1.9.0","serial":3,"lineage":"6f1c7d1e-2b9a-4c3e-9a51-0d3c2f1e8b7a","outputs":{},"resources":[{"mode":"managed","type":"null_resource","name":"a","instances":[]}],"check_results":null}' \
  > "$corpus/state_head/plain.tfstate"

# YAML: every ```yaml block of the README and docs/, and the example
# configurations.
awk -v dir="$corpus/config" '
  /^```yaml/ { n++; out = sprintf("%s/docs-%02d.yaml", dir, n); inblock = 1; next }
  /^```/ && inblock { inblock = 0; close(out); next }
  inblock { print > out }
' README.md docs/*.md
i=0
while IFS= read -r f; do
  i=$((i + 1))
  cp "$f" "$corpus/config/example-$i.yaml"
done < <(find terraform-examples examples packaging -name '*.yaml' -o -name '*.yml' 2>/dev/null | sort)

# And the settings the examples leave out.
printf '%s\n' 'listen: 0.0.0.0:8443' 'admin_listen: 127.0.0.1:9090' 'base_path: /tfstate/' \
  'trusted_proxies: [10.0.0.0/8, "::1"]' 'auth: none' 'max_lock_bytes: 65536' \
  'max_header_bytes: "64k"' 'header_timeout: 15s' 'body_min_rate: 0' 'idle_timeout: 2m' \
  'max_connections: 512' 'shutdown_grace: 500ms' 'log_format: json' \
  'backend:' '  storage_type: sqlite' '  config:' '    path: states.db' \
  '    workspaceKeyPrefix: "env:"' > "$corpus/config/settings.yaml"
printf '%s\n' 'auth:' '  users:' '    - name: ci' '      password_hash: "$argon2id$v=19$m=19456,t=2,p=1$c2FsdA$aGFzaA"' \
  '      rules: [{keys: "prod/*", access: write, workspaces: [dev]}]' \
  '  tokens:' '    - {name: t, token_hash: "x", expires: "2030-01-01T00:00:00Z"}' > "$corpus/config/auth.yaml"

# URLs: the first byte picks the method (0 GET, 1 HEAD, 2 POST, 3 PUT,
# 4 DELETE, 5 LOCK, 6 UNLOCK, 7 PATCH), the rest is path?query.
url() { printf "\\x$1%s" "$2" > "$corpus/route/$3"; }
url 00 '/states/app/terraform.tfstate' get
url 01 '/states/app/terraform.tfstate?workspace=dev' head-ws
url 02 '/states/prod/network/terraform.tfstate?ID=9c4b2d9e-0f7a-4e8b-8a0f-5e3a1c2b7d6f' post-id
url 03 '/states/a%2Fb?workspace=staging&ID=1' put-encoded
url 04 '/states/app/s?ID=x' delete
url 05 '/states/app/s' lock
url 06 '/states/app/s?workspace=default' unlock
url 02 '/locks/app/s?workspace=dev' locks-post
url 00 '/locks/app/s' locks-get
url 00 '/states/app/s?history' history
url 00 '/states/app/s?version=12' version
url 00 '/states/%2e%2e/etc/passwd' traversal
url 00 '/states/x.tflock/y' lock-name
url 00 '/healthz' healthz
url 01 '/readyz' readyz
url 00 '/metrics' metrics
echo "seeded $(find "$corpus" -type f | wc -l) inputs in $corpus"
