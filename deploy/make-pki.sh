#!/bin/bash
# make-pki.sh - the cluster's own PKI: one CA, a certificate per node, one per operator.
#
#   deploy/make-pki.sh DIR ca                      DIR/ca.pem, DIR/ca.key (the key: keep it offline)
#   deploy/make-pki.sh DIR node ID [HOST ...]      DIR/node-ID.pem, DIR/node-ID.key
#   deploy/make-pki.sh DIR operator NAME           DIR/operator-NAME.pem, DIR/operator-NAME.key
#
# Identity travels in a URI subjectAltName: "hamr:node:ID" for node ID (raft
# and peer channels check that it is the id the connection claims),
# "hamr:operator:NAME" for hamrctl on a TCP control port. HOSTs (names or IP
# literals) are added as DNS/IP names for other tools; hamr does not check them.
# Keys are ECDSA P-256, written mode 0600. Validity in days: HAMR_PKI_DAYS
# (default 825; the CA 3650). An existing file is never overwritten.
set -euo pipefail

usage() {
    sed -n '3,6p' "$0" | sed 's/^# *//' >&2
    exit 2
}

[ $# -ge 2 ] || usage
dir=$1
what=$2
shift 2
days=${HAMR_PKI_DAYS:-825}
case "$days" in '' | *[!0-9]*) echo "make-pki.sh: HAMR_PKI_DAYS: not a number: $days" >&2; exit 2 ;; esac
command -v openssl >/dev/null || { echo "make-pki.sh: needs the openssl command (apt-get install openssl)" >&2; exit 1; }
mkdir -p "$dir"
umask 077

refuse_existing() {
    local f
    for f in "$@"; do
        if [ -e "$f" ]; then
            echo "make-pki.sh: $f exists; remove it first to make a new one" >&2
            exit 1
        fi
    done
}

# sign NAME CN SAN: a key and a certificate signed by DIR's CA.
sign() {
    local name=$1 cn=$2 san=$3
    [ -f "$dir/ca.pem" ] && [ -f "$dir/ca.key" ] ||
        { echo "make-pki.sh: $dir has no CA; run: $0 $dir ca" >&2; exit 1; }
    refuse_existing "$dir/$name.pem" "$dir/$name.key"
    local ext
    ext=$(mktemp)
    trap 'rm -f "$ext" "$dir/$name.csr"' RETURN
    printf 'subjectAltName=%s\nbasicConstraints=critical,CA:FALSE\nkeyUsage=critical,digitalSignature\nextendedKeyUsage=serverAuth,clientAuth\n' \
        "$san" >"$ext"
    openssl req -new -newkey ec -pkeyopt ec_paramgen_curve:P-256 -nodes \
        -keyout "$dir/$name.key" -out "$dir/$name.csr" -subj "/CN=$cn" 2>/dev/null
    openssl x509 -req -in "$dir/$name.csr" -CA "$dir/ca.pem" -CAkey "$dir/ca.key" \
        -set_serial "0x$(openssl rand -hex 16)" -days "$days" -sha256 -extfile "$ext" \
        -out "$dir/$name.pem" 2>/dev/null
    chmod 0644 "$dir/$name.pem"
    echo "$dir/$name.pem $dir/$name.key ($san, $days days)"
}

case "$what" in
ca)
    [ $# -eq 0 ] || usage
    refuse_existing "$dir/ca.pem" "$dir/ca.key"
    openssl req -x509 -newkey ec -pkeyopt ec_paramgen_curve:P-256 -nodes \
        -keyout "$dir/ca.key" -out "$dir/ca.pem" -days "${HAMR_PKI_CA_DAYS:-3650}" -sha256 \
        -subj "/CN=hamr cluster CA $(openssl rand -hex 4)" \
        -addext "basicConstraints=critical,CA:TRUE" \
        -addext "keyUsage=critical,keyCertSign,cRLSign" 2>/dev/null
    chmod 0644 "$dir/ca.pem"
    echo "$dir/ca.pem $dir/ca.key"
    ;;
node)
    [ $# -ge 1 ] || usage
    id=$1
    shift
    case "$id" in '' | *[!0-9]* | 0) echo "make-pki.sh: node id must be a number > 0: $id" >&2; exit 2 ;; esac
    san="URI:hamr:node:$id"
    for h in "$@"; do
        case "$h" in
        *:* | [0-9]*.[0-9]*.[0-9]*.[0-9]*) san="$san,IP:$h" ;;
        *) san="$san,DNS:$h" ;;
        esac
    done
    sign "node-$id" "hamr node $id" "$san"
    ;;
operator)
    [ $# -eq 1 ] || usage
    name=$1
    case "$name" in '' | *[!A-Za-z0-9._-]*) echo "make-pki.sh: operator name: letters, digits, . _ - only: $name" >&2; exit 2 ;; esac
    sign "operator-$name" "hamr operator $name" "URI:hamr:operator:$name"
    ;;
*)
    usage
    ;;
esac
