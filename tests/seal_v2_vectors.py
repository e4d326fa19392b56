#!/usr/bin/env python3
"""Independent implementation of stickyd's seal format v2 (see src/affinity/seal.rs), from the
RFCs, python's standard hmac/hashlib (HKDF, RFC 5869) and `cryptography` (ChaCha20-Poly1305;
XChaCha20 = HChaCha20 subkey + ChaCha20-Poly1305 with 4 zero bytes || nonce[16:24]).

Prints the test vectors of `signed_format_is_as_documented_with_hkdf_keys` and
`encrypted_format_is_as_documented_with_hkdf_keys`. Needs python3 and its `cryptography`
package (Debian: python3-cryptography). Run: python3 tests/seal_v2_vectors.py
"""
import hmac, hashlib, base64, struct
from cryptography.hazmat.primitives.ciphers.aead import ChaCha20Poly1305

def hkdf(ikm, info, length=32, salt=b"\0" * 32):
    prk = hmac.new(salt, ikm, hashlib.sha256).digest()
    out, t, i = b"", b"", 1
    while len(out) < length:
        t = hmac.new(prk, t + info + bytes([i]), hashlib.sha256).digest()
        out += t
        i += 1
    return out[:length]

def lp(b):
    return struct.pack(">I", len(b)) + b

def b64(b):
    return base64.urlsafe_b64encode(b).rstrip(b"=").decode()

def rotl(v, n):
    return ((v << n) | (v >> (32 - n))) & 0xffffffff

def hchacha20(key, nonce16):
    c = [0x61707865, 0x3320646e, 0x79622d32, 0x6b206574]
    s = c + list(struct.unpack("<8I", key)) + list(struct.unpack("<4I", nonce16))
    def qr(a, b, cc, d):
        s[a] = (s[a] + s[b]) & 0xffffffff; s[d] = rotl(s[d] ^ s[a], 16)
        s[cc] = (s[cc] + s[d]) & 0xffffffff; s[b] = rotl(s[b] ^ s[cc], 12)
        s[a] = (s[a] + s[b]) & 0xffffffff; s[d] = rotl(s[d] ^ s[a], 8)
        s[cc] = (s[cc] + s[d]) & 0xffffffff; s[b] = rotl(s[b] ^ s[cc], 7)
    for _ in range(10):
        qr(0, 4, 8, 12); qr(1, 5, 9, 13); qr(2, 6, 10, 14); qr(3, 7, 11, 15)
        qr(0, 5, 10, 15); qr(1, 6, 11, 12); qr(2, 7, 8, 13); qr(3, 4, 9, 14)
    return struct.pack("<8I", *(s[0:4] + s[12:16]))

def xchacha_seal(key, nonce24, msg, aad):
    sub = hchacha20(key, nonce24[:16])
    return ChaCha20Poly1305(sub).encrypt(b"\0" * 4 + nonce24[16:], msg, aad)

# HChaCha20 test vector, draft-irtf-cfrg-xchacha-03 §2.2.1.
k = bytes(range(32))
n = bytes.fromhex("000000090000004a0000000031415927")
assert hchacha20(k, n).hex() == "82413b4227b27bfed30e42508a877d73a0f9e4d58a74a853c12ec41326d3ecdc"

# XChaCha20-Poly1305 test vector, draft-irtf-cfrg-xchacha-03 §A.3.1 (ciphertext head and tag).
sealed = xchacha_seal(
    bytes(range(0x80, 0xa0)),
    bytes.fromhex("404142434445464748494a4b4c4d4e4f5051525354555657"),
    b"Ladies and Gentlemen of the class of '99: If I could offer you only one tip for the "
    b"future, sunscreen would be it.",
    bytes.fromhex("50515253c0c1c2c3c4c5c6c7"),
)
assert sealed[:32].hex() == "bd6d179d3e83d43b9576579493c0e939572a1700252bfaccbed2902c21396cbb"
assert sealed[-16:].hex() == "c0875924c1c7987947deafd8780acf49"

ctx = b"stickyd-seal-v2" + lp(b"web") + lp(b"SERVERID")
print("ctx", ctx)

key = bytes([4]) * 32
k_sign = hkdf(key, b"stickyd seal v2 signing key")
print("k_sign(4)", k_sign.hex())
msg = ctx + lp(b"app.1") + lp(b"10") + lp(b"20")
tag = hmac.new(k_sign, msg, hashlib.sha256).digest()[:16]
print("signed", "v2.app.1.10.20." + b64(tag))

key = bytes([5]) * 32
k_enc = hkdf(key, b"stickyd seal v2 encryption key")
print("k_enc(5)", k_enc.hex())
payload = struct.pack(">QQ", 10, 20) + b"app.1"
nonce = bytes([42]) * 24
print("encrypted", "v2." + b64(nonce + xchacha_seal(k_enc, nonce, payload, ctx)))
