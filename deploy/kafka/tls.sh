#!/usr/bin/env bash
# A throwaway certificate authority and the certificates the secured local broker and its clients use.
#   tls.sh DIR   writes, once (kept when present):
#     DIR/ca.pem                  the CA's certificate: what clients and the broker trust
#     DIR/broker.pem              the broker's key (PKCS#8) and certificate chain, for Kafka's PEM keystore;
#                                 valid for localhost and 127.0.0.1
#     DIR/client.pem, client.key  a client certificate and key, for mutual TLS
#     DIR/rogue-ca.pem            a CA nobody trusts (tests: a client that trusts the wrong CA)
# The CA's own key stays in DIR/ca.key (0600). Production brings its own CA: see docs/security.md.
set -euo pipefail
dir="${1:?usage: tls.sh DIR}"
days="${TLS_DAYS:-825}"
mkdir -p "$dir"
cd "$dir"
umask 077
if [ -f ca.pem ] && [ -f broker.pem ] && [ -f client.pem ] && [ -f rogue-ca.pem ]; then exit 0; fi

ca() {  # ca NAME SUBJECT
  openssl req -x509 -newkey rsa:2048 -nodes -keyout "$1.key" -out "$1.pem" -days "$days" -subj "$2" 2>/dev/null
}
signed() {  # signed NAME SUBJECT EXTENSIONS: a key and a certificate signed by the CA
  openssl req -newkey rsa:2048 -nodes -keyout "$1.key" -out "$1.csr" -subj "$2" 2>/dev/null
  openssl x509 -req -in "$1.csr" -CA ca.pem -CAkey ca.key -CAcreateserial -out "$1.crt" -days "$days" \
    -extfile <(printf '%s\n' "$3") 2>/dev/null
  rm -f "$1.csr"
}

ca ca "/CN=pipeline local CA"
ca rogue-ca "/CN=an untrusted CA"
rm -f rogue-ca.key
signed broker "/CN=localhost" "subjectAltName=DNS:localhost,IP:127.0.0.1
extendedKeyUsage=serverAuth,clientAuth"
cat broker.key broker.crt ca.pem > broker.pem
rm -f broker.key broker.crt
signed client "/CN=pipeline" "extendedKeyUsage=clientAuth"
mv client.crt client.pem
chmod 644 ca.pem rogue-ca.pem client.pem
echo "tls: CA and certificates in $dir" >&2
