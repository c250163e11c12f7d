#!/bin/sh
# mkcert.sh DIR: a small local CA and a leaf certificate for 127.0.0.1/localhost signed by it, the
# shape every client we tested accepts (CLIENTS.md): leaf CA:FALSE with SAN IP:127.0.0.1 and
# DNS:localhost, serverAuth; tell clients to trust DIR/ca.crt (curl --cacert, NODE_EXTRA_CA_CERTS,
# SSL_CERT_FILE). Keeps existing files: delete DIR to make new ones.
set -e
d=${1:?usage: mkcert.sh DIR}
[ -f "$d/server.crt" ] && [ -f "$d/server.key" ] && [ -f "$d/ca.crt" ] && exit 0
mkdir -p "$d"
cd "$d"
umask 077
openssl req -x509 -new -newkey ec -pkeyopt ec_paramgen_curve:P-256 -nodes -days 3650 \
	-subj "/CN=kvgate local CA" -keyout ca.key -out ca.crt \
	-addext "basicConstraints=critical,CA:TRUE" -addext "keyUsage=critical,keyCertSign,cRLSign" \
	2>/dev/null
openssl req -new -newkey ec -pkeyopt ec_paramgen_curve:P-256 -nodes -subj "/CN=localhost" \
	-keyout server.key -out server.csr 2>/dev/null
printf '%s\n' "basicConstraints=critical,CA:FALSE" "keyUsage=critical,digitalSignature,keyEncipherment" \
	"extendedKeyUsage=serverAuth" "subjectAltName=IP:127.0.0.1,DNS:localhost" >server.ext
openssl x509 -req -in server.csr -CA ca.crt -CAkey ca.key -CAcreateserial -days 825 \
	-extfile server.ext -out server.crt 2>/dev/null
rm -f server.csr server.ext ca.srl
chmod 644 ca.crt server.crt
echo "mkcert: wrote $d/ca.crt (trust this), $d/server.crt, $d/server.key"
