#!/bin/sh
# Generate the PKI for Ohno's 3-member mutual-TLS etcd cluster.
#
#   gen-certs.sh OUT_DIR
#
# Produces in OUT_DIR (keys are PKCS#8 EC P-256 PEM, mode 0600; validity 10 years):
#   ca.pem, ca-key.pem                 the cluster CA
#   etcd.pem, etcd-key.pem             shared by all members as server, peer and client
#                                      cert; SANs 127.0.0.1, localhost, etcd1..3;
#                                      extendedKeyUsage serverAuth, clientAuth
#   client.pem, client-key.pem         Ohno's client cert (clientAuth), CN=ohno
#   other-ca.pem, other-ca-key.pem     an unrelated CA (negative tests only)
#   other-client.pem, other-client-key.pem   client cert signed by the unrelated CA
#
# Idempotent: if every file exists and the certificates verify against their CA and
# are not expiring within a day, nothing is regenerated. Otherwise everything is
# regenerated (a partial set is never mixed with a new CA).
# POSIX sh so it also runs in minimal images (alpine/openssl).
set -eu

if [ $# -ne 1 ] || [ -z "$1" ]; then
    echo "usage: $0 OUT_DIR" >&2
    exit 2
fi
OUT=$1
DAYS=3650
command -v openssl >/dev/null 2>&1 || { echo "gen-certs.sh: openssl not found" >&2; exit 1; }

mkdir -p "$OUT"
cd "$OUT"
OUT=$(pwd)

FILES="ca.pem ca-key.pem etcd.pem etcd-key.pem client.pem client-key.pem \
other-ca.pem other-ca-key.pem other-client.pem other-client-key.pem"

valid() {
    for f in $FILES; do [ -s "$f" ] || return 1; done
    for pair in ca.pem:etcd.pem ca.pem:client.pem other-ca.pem:other-client.pem; do
        ca=${pair%%:*} crt=${pair#*:}
        openssl verify -CAfile "$ca" "$crt" >/dev/null 2>&1 || return 1
        openssl x509 -in "$crt" -noout -checkend 86400 >/dev/null 2>&1 || return 1
    done
    openssl x509 -in ca.pem -noout -checkend 86400 >/dev/null 2>&1 || return 1
    # each key must match its certificate
    for base in ca etcd client other-ca other-client; do
        a=$(openssl x509 -in "$base.pem" -noout -pubkey 2>/dev/null) || return 1
        b=$(openssl pkey -in "$base-key.pem" -pubout 2>/dev/null) || return 1
        [ "$a" = "$b" ] || return 1
    done
    return 0
}

if valid; then
    echo "gen-certs.sh: certificates in $OUT are present and valid; nothing to do"
    exit 0
fi

umask 077
TMP=$(mktemp -d "${TMPDIR:-/tmp}/ohno-pki.XXXXXX")
trap 'rm -rf "$TMP"' EXIT INT TERM

genkey() { # genkey FILE
    openssl genpkey -algorithm EC -pkeyopt ec_paramgen_curve:P-256 -out "$1" 2>/dev/null
}

mkca() { # mkca NAME CN
    genkey "$TMP/$1-key.pem"
    cat >"$TMP/$1.cnf" <<EOF
[req]
distinguished_name = dn
prompt = no
x509_extensions = v3_ca
[dn]
CN = $2
[v3_ca]
basicConstraints = critical, CA:TRUE
keyUsage = critical, keyCertSign, cRLSign, digitalSignature
subjectKeyIdentifier = hash
authorityKeyIdentifier = keyid:always
EOF
    openssl req -x509 -new -key "$TMP/$1-key.pem" -sha256 -days "$DAYS" \
        -config "$TMP/$1.cnf" -out "$TMP/$1.pem"
}

mkleaf() { # mkleaf NAME CN CA EKU [SAN]
    name=$1 cn=$2 ca=$3 eku=$4 san=${5:-}
    genkey "$TMP/$name-key.pem"
    {
        echo "[ext]"
        echo "basicConstraints = critical, CA:FALSE"
        echo "keyUsage = critical, digitalSignature"
        echo "extendedKeyUsage = $eku"
        echo "subjectKeyIdentifier = hash"
        echo "authorityKeyIdentifier = keyid, issuer"
        [ -n "$san" ] && echo "subjectAltName = $san"
    } >"$TMP/$name.ext"
    openssl req -new -key "$TMP/$name-key.pem" -subj "/CN=$cn" -out "$TMP/$name.csr"
    openssl x509 -req -in "$TMP/$name.csr" -CA "$TMP/$ca.pem" -CAkey "$TMP/$ca-key.pem" \
        -CAcreateserial -sha256 -days "$DAYS" -extfile "$TMP/$name.ext" -extensions ext \
        -out "$TMP/$name.pem" 2>/dev/null
}

mkca ca "ohno-etcd-ca"
mkleaf etcd "etcd" ca "serverAuth, clientAuth" \
    "IP:127.0.0.1, DNS:localhost, DNS:etcd1, DNS:etcd2, DNS:etcd3"
mkleaf client "ohno" ca "clientAuth"
mkca other-ca "ohno-unrelated-ca"
mkleaf other-client "ohno" other-ca "clientAuth"

for f in $FILES; do
    case $f in
        *-key.pem) chmod 600 "$TMP/$f" ;;
        *) chmod 644 "$TMP/$f" ;;
    esac
    mv -f "$TMP/$f" "$OUT/$f"
done
# other-ca-key.pem is kept only so the idempotency check can match it; nothing uses it.
echo "gen-certs.sh: wrote CA, etcd, client and other-CA certificates to $OUT"
