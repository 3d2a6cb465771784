#!/usr/bin/env bash
# Regenerate the development certificate for localhost (self-signed, 10 years).
# FOR DEVELOPMENT ONLY: the private key is public in this repository.
set -euo pipefail
cd "$(dirname "$0")"
openssl req -x509 -newkey ec -pkeyopt ec_paramgen_curve:P-256 -nodes \
  -keyout localhost.key -out localhost.crt -days 3650 \
  -subj "/CN=localhost" \
  -addext "subjectAltName=DNS:localhost,IP:127.0.0.1,IP:::1" \
  -addext "basicConstraints=critical,CA:FALSE" \
  -addext "extendedKeyUsage=serverAuth"
echo "wrote certs/localhost.crt and certs/localhost.key"
