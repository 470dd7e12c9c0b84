"""virtio-crypto (virtio 1.2 §5.9) request formats, plus vcrypto's documented
vendor extensions for what the spec lacks.

Pure codecs: bytes in, typed values out, ``WireError`` (carrying the
virtio-crypto status to report) for anything malformed. Little-endian
throughout, as the spec requires.

Session create (control request, legacy fixed-size form the Linux driver and
QEMU use; 72 bytes then the key)::

    virtio_crypto_op_ctrl_req:
    offset  size  field
    0       4     header.opcode     e.g. AEAD_CREATE_SESSION = (3 << 8) | 2
    4       4     header.algo       service algorithm (GCM = 1, RSA = 1, ...)
    8       4     header.flag       0
    12      4     header.queue_id   0 (reserved in virtio 1.2)
    16      56    op_flf            per-service session parameters, zero padded:
      AEAD    (virtio_crypto_aead_create_session_flf)
              16 algo, 20 key_len, 24 tag_len, 28 aad_len (0 = any), 32 op
              (ENCRYPT = 1, DECRYPT = 2), 36 padding
      AKCIPHER (virtio_crypto_akcipher_session_flf)
              16 algo (RSA = 1, ECDSA = 3, vendor ED25519 = 0x8001),
              20 keytype (PRIVATE = 2, vendor KEY_REF = 0x8001), 24 keylen,
              28 rsa.padding_algo (PKCS1 = 1, vendor PSS = 0x8001) | ecdsa.curve_id
                 (P-256 = 3, P-384 = 4),
              32 rsa.hash_algo (SHA256 = 6, SHA384 = 7, SHA512 = 8) | ecdsa.padding (0)
      vendor KX (ECDH keygen+derive; service 0x80)
              16 curve (P-256 = 3, P-384 = 4, vendor X25519 = 0x8001,
              vendor X25519MLKEM768 = 0x8002, SecP256r1MLKEM768 = 0x8003), 20 padding
      CIPHER  (virtio_crypto_sym_create_session_flf, opcode CIPHER_CREATE_SESSION
              = 0x002): 16..48 union, 64 op_type (CIPHER = 1, ALGORITHM_CHAINING = 2)
              op_type CIPHER: 16 algo (AES_CBC = 3), 20 key_len, 24 op (1/2)
              op_type CHAIN (virtio_crypto_alg_chain_session_flf): 16
              alg_chain_order (HASH_THEN_CIPHER = 1 for decrypt, CIPHER_THEN_HASH
              = 2 for encrypt), 20 hash_mode (AUTH = 2: HMAC), 24 cipher algo,
              28 key_len, 32 op, 40 mac algo (HMAC_SHA1 = 2, HMAC_SHA_256 = 4),
              44 hash_result_len (the full digest), 48 auth_key_len, 56 aad_len
      MAC     (virtio_crypto_mac_create_session_flf, opcode MAC_CREATE_SESSION =
              0x202): 16 algo, 20 hash_result_len, 24 auth_key_len
    72      n     op_vlf: the key: AEAD raw key (key_len bytes); CIPHER the AES key,
                  CHAIN the AES key then the HMAC key, MAC the HMAC key; AKCIPHER private
                  key as DER (PKCS#8 or PKCS#1/SEC1) or, with keytype KEY_REF,
                  the UTF-8 name of a key the host loaded itself (keyless mode);
                  nothing for KX

Data request header (``virtio_crypto_op_data_req``, 72 bytes, device-readable)::

    offset  size  field
    0       4     header.opcode     AEAD_ENCRYPT (0x300), AEAD_DECRYPT (0x301),
                                    AKCIPHER_SIGN (0x402), vendor KX_DERIVE (0x8000)
    4       4     header.algo       0 (the algorithm comes from the session), or
                                    the session's algo
    8       8     header.session_id
    16      4     header.flag       0
    20      4     header.padding    0
    24      48    op_flf, zero padded:
      AEAD    (virtio_crypto_aead_data_flf) 24 iv_len, 28 aad_len,
              32 src_data_len, 36 dst_data_len (≥ src + tag for encrypt),
              40 tag_len, 44 reserved
      AKCIPHER / KX (virtio_crypto_akcipher_data_flf) 24 src_data_len, 28 dst_data_len
      CIPHER  opcodes CIPHER_ENCRYPT (0x000) / CIPHER_DECRYPT (0x001),
              virtio_crypto_sym_data_flf: 24..64 union, 64 op_type:
              op_type CIPHER: 24 iv_len, 28 src_data_len, 32 dst_data_len
              op_type CHAIN (virtio_crypto_alg_chain_data_para): 24 iv_len,
              28 src_data_len, 32 dst_data_len, 36 cipher_start_src_offset (0),
              40 len_to_cipher, 44 hash_start_src_offset (0), 48 len_to_hash,
              52 aad_len, 56 hash_result_len
      MAC     opcode MAC (0x200): 24 src_data_len, 28 hash_result_len

A chained request's writable stream is dst_data then hash_result (encrypt:
ciphertext || HMAC over aad || ciphertext). vcrypto convention for the
decrypt direction (verify-then-decrypt), which virtio leaves open: src holds
ciphertext || the HMAC to check (src_data_len = len_to_cipher +
hash_result_len), dst gets the plaintext and there is no hash_result buffer.
QEMU 7.2's Linux guests send plain cipher requests only.

Stateless AEAD data request (feature ``VIRTIO_CRYPTO_F_AEAD_STATELESS_MODE``,
bit 4, which requires ``VIRTIO_CRYPTO_F_REVISION_1``, bit 0; virtio 1.2
§5.9.7.7): the key travels with the request, no session exists. Once the
feature is negotiated ``header.flag`` tells the modes apart: bit 0
``VIRTIO_CRYPTO_FLAG_SESSION_MODE`` set = session mode (every request above),
clear = stateless; without the feature the flag is ignored and every
request is session mode (what QEMU 7.2 and Linux 6.1 guests negotiate)::

    0       4     header.opcode     AEAD_ENCRYPT / AEAD_DECRYPT
    4       4     header.algo       0
    8       8     header.session_id 0 (no session)
    16      4     header.flag       0 (stateless)
    20      4     header.padding    0
    24      32    op_flf (virtio_crypto_aead_data_flf_stateless): 24 sess_para.algo
                  (GCM = 1, CHACHA20_POLY1305 = 3), 28 sess_para.key_len, 32 sess_para.op
                  (ENCRYPT = 1 with AEAD_ENCRYPT, DECRYPT = 2 with AEAD_DECRYPT),
                  36 iv_len, 40 tag_len, 44 aad_len, 48 src_data_len, 52 dst_data_len
    56      16    zero padding to the 72-byte header

and the readable stream after the header starts with the key (key_len
bytes, the spec's ``key[key_len]`` before the IV), then iv, aad, src as in
session mode.

Buffers after the header, in this order (virtio 1.2 §5.9.7.2): device-readable
iv, aad, src; device-writable dst, then the 1-byte ``virtio_crypto_inhdr``
status. A zero-length field has no buffer. The device treats the readable
buffers as one byte stream and the writable ones as another, so a driver may
split or merge them across descriptors.

Vendor extensions (virtio assigns no vendor range; we use values far from the
assigned ones, 0x80 for a service and 0x8000+ for algorithms/types):

* service ``VCRYPTO_SERVICE_KX`` = 0x80: ECDH keygen+derive in one op. src =
  the peer's public key (X25519 raw 32 B; P-256/384 SEC1 uncompressed), or
  own private scalar (32/32/48 B) || peer key (keyed form, TLS 1.2),
  dst = own ephemeral public key || shared secret; a keyed-form request with
  dst_data_len of the secret's size alone (32/32/48) gets only the secret
  (derive-only: the driver holds its public key). Curves
  ``VCRYPTO_KX_X25519MLKEM768`` = 0x8002 and ``VCRYPTO_KX_SECP256R1MLKEM768``
  = 0x8003 are the post-quantum hybrids of draft-ietf-tls-ecdhe-mlkem, a KEM
  in the same one-op shape: src = the client share (ML-KEM-768 encapsulation
  key and ECDH key, 1216 / 1249 B), dst = ML-KEM ciphertext and own ECDH key
  (1120 / 1153 B) || the ML-KEM and ECDH secrets (64 B), each pair in the
  group's order (ML-KEM first for X25519MLKEM768, P-256 first for the other);
  no keyed form.
* AKCIPHER algo ``VCRYPTO_AKCIPHER_ED25519`` = 0x8001 (src = the message).
* RSA padding ``VCRYPTO_RSA_PSS_PADDING`` = 0x8001: RSASSA-PSS, MGF1 with the
  session hash, salt length = hash length (RFC 8446 §4.2.3).
* ECDSA sign hashes the message with the curve's TLS hash (SHA-256 for
  P-256, SHA-384 for P-384): src is the message, not a digest.
* keytype ``VCRYPTO_KEYTYPE_KEY_REF`` = 0x8001: key names a host-held key.
"""
from __future__ import annotations

import dataclasses
import struct

from vcrypto.ops import (
    AEAD_KEY_BYTES, AEAD_TAG_BYTES, CHAIN_PARTS, CIPHER_KEY_BYTES, MAC_DIGEST_BYTES,
    MAC_MAX_KEY_BYTES, Alg, Op,
)

# -- services and opcodes (virtio 1.2 §5.9.7) --------------------------------

SERVICE_CIPHER, SERVICE_HASH, SERVICE_MAC, SERVICE_AEAD, SERVICE_AKCIPHER = 0, 1, 2, 3, 4
VCRYPTO_SERVICE_KX = 0x80


def opcode(service: int, op: int) -> int:
    return (service << 8) | op


AEAD_CREATE_SESSION = opcode(SERVICE_AEAD, 0x02)
AEAD_DESTROY_SESSION = opcode(SERVICE_AEAD, 0x03)
AKCIPHER_CREATE_SESSION = opcode(SERVICE_AKCIPHER, 0x04)
AKCIPHER_DESTROY_SESSION = opcode(SERVICE_AKCIPHER, 0x05)
KX_CREATE_SESSION = opcode(VCRYPTO_SERVICE_KX, 0x04)
KX_DESTROY_SESSION = opcode(VCRYPTO_SERVICE_KX, 0x05)

CIPHER_CREATE_SESSION = opcode(SERVICE_CIPHER, 0x02)
CIPHER_DESTROY_SESSION = opcode(SERVICE_CIPHER, 0x03)
MAC_CREATE_SESSION = opcode(SERVICE_MAC, 0x02)
MAC_DESTROY_SESSION = opcode(SERVICE_MAC, 0x03)

CIPHER_ENCRYPT = opcode(SERVICE_CIPHER, 0x00)
CIPHER_DECRYPT = opcode(SERVICE_CIPHER, 0x01)
MAC = opcode(SERVICE_MAC, 0x00)
AEAD_ENCRYPT = opcode(SERVICE_AEAD, 0x00)
AEAD_DECRYPT = opcode(SERVICE_AEAD, 0x01)
AKCIPHER_SIGN = opcode(SERVICE_AKCIPHER, 0x02)
KX_DERIVE = opcode(VCRYPTO_SERVICE_KX, 0x00)

# -- feature bits (virtio 1.2 §5.9.3) and the data header's mode flag ---------

VIRTIO_CRYPTO_F_REVISION_1 = 0
VIRTIO_CRYPTO_F_AEAD_STATELESS_MODE = 4
#: what a device offering stateless AEAD offers and a driver wanting it asks for
STATELESS_AEAD_FEATURES = (1 << VIRTIO_CRYPTO_F_REVISION_1) | (1 << VIRTIO_CRYPTO_F_AEAD_STATELESS_MODE)
VIRTIO_CRYPTO_FLAG_SESSION_MODE = 1


def stateless_aead(features: int) -> bool:
    """Whether negotiated ``features`` include stateless AEAD (and revision 1)."""
    return features & STATELESS_AEAD_FEATURES == STATELESS_AEAD_FEATURES


# -- status (virtio_crypto_inhdr.status, session_input.status) ---------------

VIRTIO_CRYPTO_OK = 0
VIRTIO_CRYPTO_ERR = 1
VIRTIO_CRYPTO_BADMSG = 2
VIRTIO_CRYPTO_NOTSUPP = 3
VIRTIO_CRYPTO_INVSESS = 4
VIRTIO_CRYPTO_NOSPC = 5
VIRTIO_CRYPTO_KEY_REJECTED = 6

STATUS_NAMES = {0: "ok", 1: "err", 2: "badmsg", 3: "notsupp", 4: "invsess", 5: "nospc",
                6: "key_rejected"}

# -- algorithms ----------------------------------------------------------------

AEAD_GCM = 1
AEAD_CHACHA20_POLY1305 = 3
OP_ENCRYPT, OP_DECRYPT = 1, 2

AKCIPHER_RSA = 1
AKCIPHER_ECDSA = 3
VCRYPTO_AKCIPHER_ED25519 = 0x8001
KEYTYPE_PRIVATE = 2
VCRYPTO_KEYTYPE_KEY_REF = 0x8001
RSA_PKCS1_PADDING = 1
VCRYPTO_RSA_PSS_PADDING = 0x8001
RSA_SHA256, RSA_SHA384, RSA_SHA512 = 6, 7, 8
CURVE_NIST_P256 = 3
CURVE_NIST_P384 = 4
VCRYPTO_CURVE_X25519 = 0x8001
VCRYPTO_KX_X25519MLKEM768 = 0x8002
VCRYPTO_KX_SECP256R1MLKEM768 = 0x8003

CIPHER_AES_CBC = 3
HASH_SHA1, HASH_SHA_256 = 2, 4          # VIRTIO_CRYPTO_HASH_*
MAC_HMAC_SHA1, MAC_HMAC_SHA_256 = 2, 4  # VIRTIO_CRYPTO_MAC_*
SYM_OP_NONE, SYM_OP_CIPHER, SYM_OP_CHAIN = 0, 1, 2
SYM_HASH_MODE_PLAIN, SYM_HASH_MODE_AUTH, SYM_HASH_MODE_NESTED = 1, 2, 3
CHAIN_HASH_THEN_CIPHER, CHAIN_CIPHER_THEN_HASH = 1, 2

CTRL_REQ_BYTES = 72          # header 16 + op_flf 56
DATA_REQ_BYTES = 72          # header 24 + op_flf 48
INHDR_BYTES = 1
MAX_KEY_BYTES = 16 * 1024    # an RSA-8192 PKCS#8 DER is ~4.7 KiB

_CTRL_HDR = struct.Struct("<IIII")
_DATA_HDR = struct.Struct("<IIQII")
_AEAD_FLF = struct.Struct("<IIIIII")
_AK_FLF = struct.Struct("<IIIII")
#: virtio_crypto_aead_data_flf_stateless: algo, key_len, op, iv_len, tag_len,
#: aad_len, src_data_len, dst_data_len (from header offset 24)
AEAD_STATELESS_FLF = struct.Struct("<8I")
_U32X2 = struct.Struct("<II")
_U32X4 = struct.Struct("<IIII")
#: chain session flf: order, hash_mode, cipher (algo, key_len, op, pad),
#: mac (algo, result_len, auth_key_len, pad), aad_len, pad; op_type at 64
_CHAIN_FLF = struct.Struct("<12I")
SYM_OP_TYPE_OFFSET = 64
#: chain data para (10 u32 from offset 24)
CHAIN_PARA = struct.Struct("<10I")


class WireError(Exception):
    """A malformed or unsupported request; ``status`` is what to report."""

    def __init__(self, status: int, detail: str):
        super().__init__(f"{STATUS_NAMES.get(status, status)}: {detail}")
        self.status = status
        self.detail = detail


# -- Op/Alg <-> virtio numbers ----------------------------------------------

_RSA_SIGN = {
    Alg.RSA_PKCS1_SHA256: (RSA_PKCS1_PADDING, RSA_SHA256),
    Alg.RSA_PKCS1_SHA384: (RSA_PKCS1_PADDING, RSA_SHA384),
    Alg.RSA_PKCS1_SHA512: (RSA_PKCS1_PADDING, RSA_SHA512),
    Alg.RSA_PSS_RSAE_SHA256: (VCRYPTO_RSA_PSS_PADDING, RSA_SHA256),
    Alg.RSA_PSS_RSAE_SHA384: (VCRYPTO_RSA_PSS_PADDING, RSA_SHA384),
    Alg.RSA_PSS_RSAE_SHA512: (VCRYPTO_RSA_PSS_PADDING, RSA_SHA512),
}
_RSA_SIGN_REV = {v: k for k, v in _RSA_SIGN.items()}
_ECDSA_SIGN = {Alg.ECDSA_SECP256R1_SHA256: CURVE_NIST_P256, Alg.ECDSA_SECP384R1_SHA384: CURVE_NIST_P384}
_ECDSA_SIGN_REV = {v: k for k, v in _ECDSA_SIGN.items()}
_KX = {Alg.X25519: VCRYPTO_CURVE_X25519, Alg.SECP256R1: CURVE_NIST_P256, Alg.SECP384R1: CURVE_NIST_P384,
       Alg.X25519MLKEM768: VCRYPTO_KX_X25519MLKEM768,
       Alg.SECP256R1MLKEM768: VCRYPTO_KX_SECP256R1MLKEM768}
_KX_REV = {v: k for k, v in _KX.items()}

_MAC_ALGO = {Alg.HMAC_SHA1: MAC_HMAC_SHA1, Alg.HMAC_SHA256: MAC_HMAC_SHA_256}
_MAC_ALGO_REV = {v: k for k, v in _MAC_ALGO.items()}
_CIPHER_OF_KEY_LEN = {n: a for a, n in CIPHER_KEY_BYTES.items()}
_CHAIN_OF_PARTS = {v: k for k, v in CHAIN_PARTS.items()}

#: data opcode each op's requests must carry
DATA_OPCODE = {Op.AEAD_SEAL: AEAD_ENCRYPT, Op.AEAD_OPEN: AEAD_DECRYPT, Op.SIGN: AKCIPHER_SIGN,
               Op.ECDH: KX_DERIVE, Op.CIPHER_ENCRYPT: CIPHER_ENCRYPT,
               Op.CIPHER_DECRYPT: CIPHER_DECRYPT, Op.MAC: MAC,
               Op.CHAIN_SEAL: CIPHER_ENCRYPT, Op.CHAIN_OPEN: CIPHER_DECRYPT}
#: sym op_type of the cipher-service ops
SYM_OP_TYPE = {Op.CIPHER_ENCRYPT: SYM_OP_CIPHER, Op.CIPHER_DECRYPT: SYM_OP_CIPHER,
               Op.CHAIN_SEAL: SYM_OP_CHAIN, Op.CHAIN_OPEN: SYM_OP_CHAIN}
DESTROY_OPCODE = {Op.AEAD_SEAL: AEAD_DESTROY_SESSION, Op.AEAD_OPEN: AEAD_DESTROY_SESSION,
                  Op.SIGN: AKCIPHER_DESTROY_SESSION, Op.ECDH: KX_DESTROY_SESSION,
                  Op.CIPHER_ENCRYPT: CIPHER_DESTROY_SESSION,
                  Op.CIPHER_DECRYPT: CIPHER_DESTROY_SESSION, Op.MAC: MAC_DESTROY_SESSION,
                  Op.CHAIN_SEAL: CIPHER_DESTROY_SESSION, Op.CHAIN_OPEN: CIPHER_DESTROY_SESSION}


def aead_algo(alg: Alg) -> int:
    """The virtio AEAD algo of an AEAD ``Alg`` (the key length tells AES-128 from -256)."""
    return AEAD_CHACHA20_POLY1305 if alg is Alg.CHACHA20_POLY1305 else AEAD_GCM


def aead_alg(algo: int, key_len: int) -> Alg:
    """The ``Alg`` of a virtio AEAD algo with a key of ``key_len`` bytes;
    ``WireError`` (NOTSUPP / KEY_REJECTED) otherwise."""
    if algo == AEAD_GCM:
        alg = {16: Alg.AES_128_GCM, 32: Alg.AES_256_GCM}.get(key_len)
    elif algo == AEAD_CHACHA20_POLY1305:
        alg = Alg.CHACHA20_POLY1305 if key_len == 32 else None
    else:
        raise WireError(VIRTIO_CRYPTO_NOTSUPP, f"AEAD algo {algo}")
    if alg is None or AEAD_KEY_BYTES[alg] != key_len:
        raise WireError(VIRTIO_CRYPTO_KEY_REJECTED, f"AEAD algo {algo} with a {key_len}-byte key")
    return alg


def _mac_alg(mac_algo: int, hash_result_len: int) -> Alg:
    mac = _MAC_ALGO_REV.get(mac_algo)
    if mac is None:
        raise WireError(VIRTIO_CRYPTO_NOTSUPP, f"MAC algo {mac_algo}: HMAC-SHA1 (2), -SHA256 (4)")
    if hash_result_len != MAC_DIGEST_BYTES[mac]:
        raise WireError(VIRTIO_CRYPTO_NOTSUPP, f"hash_result_len {hash_result_len}: only the "
                                               f"full {MAC_DIGEST_BYTES[mac]}-byte digest")
    return mac


def sym_session_params(*, op_type: int, cipher_algo: int, key: bytes, direction: int,
                       hash_mode: int = 0, mac_algo: int = 0, hash_result_len: int = 0,
                       auth_key: bytes = b"", chain_order: int = 0) -> SessionParams:
    """A virtio sym (cipher / alg-chain) session, as both session forms carry
    it (ours and QEMU 7.2's), checked and named in the shared vocabulary."""
    if direction not in (OP_ENCRYPT, OP_DECRYPT):
        raise WireError(VIRTIO_CRYPTO_ERR, f"sym op {direction}: expected 1 (encrypt) or 2")
    encrypt = direction == OP_ENCRYPT
    if op_type not in (SYM_OP_CIPHER, SYM_OP_CHAIN):
        raise WireError(VIRTIO_CRYPTO_NOTSUPP, f"sym op_type {op_type}: only cipher (1) and "
                                               f"algorithm chaining (2)")
    if cipher_algo != CIPHER_AES_CBC:
        raise WireError(VIRTIO_CRYPTO_NOTSUPP, f"cipher algo {cipher_algo}: only AES-CBC (3)")
    cipher = _CIPHER_OF_KEY_LEN.get(len(key))
    if cipher is None:
        raise WireError(VIRTIO_CRYPTO_KEY_REJECTED, f"AES-CBC key of {len(key)} bytes")
    if op_type == SYM_OP_CIPHER:
        return SessionParams(Op.CIPHER_ENCRYPT if encrypt else Op.CIPHER_DECRYPT, cipher, key)
    if hash_mode != SYM_HASH_MODE_AUTH:
        raise WireError(VIRTIO_CRYPTO_NOTSUPP, f"chain hash_mode {hash_mode}: only AUTH (2, HMAC)")
    want_order = CHAIN_CIPHER_THEN_HASH if encrypt else CHAIN_HASH_THEN_CIPHER
    if chain_order != want_order:
        raise WireError(VIRTIO_CRYPTO_NOTSUPP,
                        f"chain order {chain_order} for {'encrypt' if encrypt else 'decrypt'}: "
                        f"only encrypt-then-MAC ({want_order})")
    mac = _mac_alg(mac_algo, hash_result_len)
    if not 0 < len(auth_key) <= MAC_MAX_KEY_BYTES:
        raise WireError(VIRTIO_CRYPTO_KEY_REJECTED, f"HMAC key of {len(auth_key)} bytes")
    alg = _CHAIN_OF_PARTS.get((cipher, mac))
    if alg is None:
        raise WireError(VIRTIO_CRYPTO_NOTSUPP, f"{cipher.value} chained with {mac.value}")
    return SessionParams(Op.CHAIN_SEAL if encrypt else Op.CHAIN_OPEN, alg, key + auth_key)


def cipher_key_bytes(p: SessionParams) -> int:
    """Length of the AES key at the start of a CIPHER / CHAIN session's key."""
    return CIPHER_KEY_BYTES[CHAIN_PARTS[p.alg][0] if p.alg in CHAIN_PARTS else p.alg]


@dataclasses.dataclass(frozen=True)
class SessionParams:
    """What a session create asks for, in the shared vocabulary.

    Exactly one of ``key`` (raw AEAD key / DER private key) and ``key_ref``
    (name of a host-held private key) is set for SIGN; AEAD has ``key``;
    ECDH has neither.
    """

    op: Op
    alg: Alg
    key: bytes = b""
    key_ref: str | None = None

    def __repr__(self) -> str:  # never print key material
        return (f"SessionParams(op={self.op.value}, alg={self.alg.value}, "
                f"key=<{len(self.key)} bytes>, key_ref={self.key_ref!r})")


def encode_session_create(p: SessionParams) -> bytes:
    """``virtio_crypto_op_ctrl_req`` (72 bytes) followed by the key vlf."""
    if p.op in (Op.AEAD_SEAL, Op.AEAD_OPEN):
        algo = aead_algo(p.alg)
        hdr = _CTRL_HDR.pack(AEAD_CREATE_SESSION, algo, 0, 0)
        flf = _AEAD_FLF.pack(algo, len(p.key), AEAD_TAG_BYTES, 0,
                             OP_ENCRYPT if p.op is Op.AEAD_SEAL else OP_DECRYPT, 0)
        vlf = p.key
    elif p.op is Op.SIGN:
        vlf = p.key_ref.encode() if p.key_ref is not None else p.key
        keytype = VCRYPTO_KEYTYPE_KEY_REF if p.key_ref is not None else KEYTYPE_PRIVATE
        if p.alg in _RSA_SIGN:
            algo, (para0, para1) = AKCIPHER_RSA, _RSA_SIGN[p.alg]
        elif p.alg in _ECDSA_SIGN:
            algo, para0, para1 = AKCIPHER_ECDSA, _ECDSA_SIGN[p.alg], 0
        elif p.alg is Alg.ED25519:
            algo, para0, para1 = VCRYPTO_AKCIPHER_ED25519, 0, 0
        else:
            raise WireError(VIRTIO_CRYPTO_NOTSUPP, f"sign with {p.alg.value}")
        hdr = _CTRL_HDR.pack(AKCIPHER_CREATE_SESSION, algo, 0, 0)
        flf = _AK_FLF.pack(algo, keytype, len(vlf), para0, para1)
    elif p.op in SYM_OP_TYPE:
        n = cipher_key_bytes(p)
        if len(p.key) < n or (p.op in (Op.CIPHER_ENCRYPT, Op.CIPHER_DECRYPT) and len(p.key) != n):
            # the wire names AES-CBC and a key length: the length *is* the alg
            raise WireError(VIRTIO_CRYPTO_KEY_REJECTED, f"{p.alg.value} key of {len(p.key)} bytes")
        direction = OP_ENCRYPT if p.op in (Op.CIPHER_ENCRYPT, Op.CHAIN_SEAL) else OP_DECRYPT
        hdr = _CTRL_HDR.pack(CIPHER_CREATE_SESSION, CIPHER_AES_CBC, 0, 0)
        flf = bytearray(56)
        if SYM_OP_TYPE[p.op] == SYM_OP_CIPHER:
            _U32X4.pack_into(flf, 0, CIPHER_AES_CBC, n, direction, 0)
        else:
            mac = CHAIN_PARTS[p.alg][1]
            order = CHAIN_CIPHER_THEN_HASH if direction == OP_ENCRYPT else CHAIN_HASH_THEN_CIPHER
            _CHAIN_FLF.pack_into(flf, 0, order, SYM_HASH_MODE_AUTH, CIPHER_AES_CBC, n, direction, 0,
                                 _MAC_ALGO[mac], MAC_DIGEST_BYTES[mac], len(p.key) - n, 0, 0, 0)
        struct.pack_into("<I", flf, SYM_OP_TYPE_OFFSET - 16, SYM_OP_TYPE[p.op])
        flf = bytes(flf)
        vlf = p.key
    elif p.op is Op.MAC:
        hdr = _CTRL_HDR.pack(MAC_CREATE_SESSION, _MAC_ALGO[p.alg], 0, 0)
        flf = _U32X4.pack(_MAC_ALGO[p.alg], MAC_DIGEST_BYTES[p.alg], len(p.key), 0)
        vlf = p.key
    elif p.op is Op.ECDH:
        if p.alg not in _KX:
            raise WireError(VIRTIO_CRYPTO_NOTSUPP, f"ecdh with {p.alg.value}")
        hdr = _CTRL_HDR.pack(KX_CREATE_SESSION, _KX[p.alg], 0, 0)
        flf = _U32X2.pack(_KX[p.alg], 0)
        vlf = b""
    else:  # pragma: no cover
        raise WireError(VIRTIO_CRYPTO_NOTSUPP, f"op {p.op}")
    return hdr + flf.ljust(56, b"\0") + vlf


def decode_session_create(data: bytes | memoryview) -> SessionParams:
    """Validate a session create request; every failure is a ``WireError``."""
    if len(data) < CTRL_REQ_BYTES:
        raise WireError(VIRTIO_CRYPTO_ERR, f"session create of {len(data)} bytes < {CTRL_REQ_BYTES}")
    code, hdr_algo, _flag, _queue = _CTRL_HDR.unpack_from(data, 0)
    vlf = bytes(data[CTRL_REQ_BYTES:])
    if len(vlf) > MAX_KEY_BYTES:
        raise WireError(VIRTIO_CRYPTO_ERR, f"key of {len(vlf)} bytes exceeds {MAX_KEY_BYTES}")
    if code == AEAD_CREATE_SESSION:
        algo, key_len, tag_len, _aad_len, direction, _pad = _AEAD_FLF.unpack_from(data, 16)
        if key_len != len(vlf):
            raise WireError(VIRTIO_CRYPTO_ERR, f"key_len {key_len} but {len(vlf)} key bytes follow")
        if tag_len != AEAD_TAG_BYTES:
            raise WireError(VIRTIO_CRYPTO_NOTSUPP, f"tag_len {tag_len}: only {AEAD_TAG_BYTES}")
        if direction not in (OP_ENCRYPT, OP_DECRYPT):
            raise WireError(VIRTIO_CRYPTO_ERR, f"AEAD op {direction}: expected 1 (encrypt) or 2")
        alg = aead_alg(algo, key_len)
        return SessionParams(Op.AEAD_SEAL if direction == OP_ENCRYPT else Op.AEAD_OPEN, alg, vlf)
    if code == AKCIPHER_CREATE_SESSION:
        algo, keytype, keylen, para0, para1 = _AK_FLF.unpack_from(data, 16)
        if keylen != len(vlf) or keylen == 0:
            raise WireError(VIRTIO_CRYPTO_ERR, f"keylen {keylen} but {len(vlf)} key bytes follow")
        if algo == AKCIPHER_RSA:
            alg = _RSA_SIGN_REV.get((para0, para1))
        elif algo == AKCIPHER_ECDSA:
            alg = _ECDSA_SIGN_REV.get(para0) if para1 == 0 else None
        elif algo == VCRYPTO_AKCIPHER_ED25519:
            alg = Alg.ED25519
        else:
            alg = None
        if alg is None:
            raise WireError(VIRTIO_CRYPTO_NOTSUPP,
                            f"akcipher algo {algo} with parameters ({para0}, {para1})")
        if keytype == KEYTYPE_PRIVATE:
            return SessionParams(Op.SIGN, alg, vlf)
        if keytype == VCRYPTO_KEYTYPE_KEY_REF:
            try:
                return SessionParams(Op.SIGN, alg, key_ref=vlf.decode("utf-8"))
            except UnicodeDecodeError:
                raise WireError(VIRTIO_CRYPTO_ERR, "key_ref is not UTF-8") from None
        raise WireError(VIRTIO_CRYPTO_NOTSUPP, f"akcipher keytype {keytype}: sign needs a private key")
    if code == CIPHER_CREATE_SESSION:
        (op_type,) = struct.unpack_from("<I", data, SYM_OP_TYPE_OFFSET)
        if op_type == SYM_OP_CHAIN:
            (order, mode, c_algo, key_len, direction, _p, m_algo, result_len, auth_len,
             _p2, _aad, _p3) = _CHAIN_FLF.unpack_from(data, 16)
        else:
            c_algo, key_len, direction, _p = _U32X4.unpack_from(data, 16)
            order = mode = m_algo = result_len = auth_len = 0
        if key_len + auth_len != len(vlf):
            raise WireError(VIRTIO_CRYPTO_ERR, f"key_len {key_len} + auth_key_len {auth_len} but "
                                               f"{len(vlf)} key bytes follow")
        return sym_session_params(op_type=op_type, cipher_algo=c_algo, key=vlf[:key_len],
                                  direction=direction, hash_mode=mode, mac_algo=m_algo,
                                  hash_result_len=result_len, auth_key=vlf[key_len:],
                                  chain_order=order)
    if code == MAC_CREATE_SESSION:
        m_algo, result_len, auth_len, _p = _U32X4.unpack_from(data, 16)
        alg = _mac_alg(m_algo, result_len)
        if auth_len != len(vlf) or not 0 < auth_len <= MAC_MAX_KEY_BYTES:
            raise WireError(VIRTIO_CRYPTO_KEY_REJECTED,
                            f"auth_key_len {auth_len} with {len(vlf)} key bytes")
        return SessionParams(Op.MAC, alg, vlf)
    if code == KX_CREATE_SESSION:
        curve, _pad = _U32X2.unpack_from(data, 16)
        if vlf:
            raise WireError(VIRTIO_CRYPTO_ERR, "an ECDH session carries no key")
        if curve not in _KX_REV:
            raise WireError(VIRTIO_CRYPTO_NOTSUPP, f"KX curve {curve}")
        return SessionParams(Op.ECDH, _KX_REV[curve])
    raise WireError(VIRTIO_CRYPTO_NOTSUPP, f"control opcode {code:#x} is not a session create")


# -- data requests ----------------------------------------------------------

@dataclasses.dataclass(frozen=True, slots=True)
class DataRequest:
    """A decoded ``virtio_crypto_op_data_req``."""

    opcode: int
    algo: int
    session_id: int
    iv_len: int = 0
    aad_len: int = 0
    src_len: int = 0
    dst_len: int = 0
    tag_len: int = 0
    flag: int = 0        # VIRTIO_CRYPTO_FLAG_SESSION_MODE once stateless mode is negotiated


def encode_data_request(req: DataRequest, out: memoryview | bytearray | None = None) -> bytes | None:
    """Pack the 72-byte header; into ``out`` (in place, zero-copy) if given."""
    buf = bytearray(DATA_REQ_BYTES) if out is None else out
    if out is not None:
        buf[:DATA_REQ_BYTES] = bytes(DATA_REQ_BYTES)
    _DATA_HDR.pack_into(buf, 0, req.opcode, req.algo, req.session_id, req.flag, 0)
    if req.opcode in (AEAD_ENCRYPT, AEAD_DECRYPT):
        _AEAD_FLF.pack_into(buf, 24, req.iv_len, req.aad_len, req.src_len, req.dst_len,
                            req.tag_len, 0)
    else:
        _U32X2.pack_into(buf, 24, req.src_len, req.dst_len)
    return bytes(buf) if out is None else None


def decode_data_request(data: bytes | memoryview) -> DataRequest:
    if len(data) < DATA_REQ_BYTES:
        raise WireError(VIRTIO_CRYPTO_ERR, f"data request header of {len(data)} bytes < {DATA_REQ_BYTES}")
    code, algo, session_id, flag, _pad = _DATA_HDR.unpack_from(data, 0)
    if code in (AEAD_ENCRYPT, AEAD_DECRYPT):
        iv_len, aad_len, src_len, dst_len, tag_len, _r = _AEAD_FLF.unpack_from(data, 24)
        return DataRequest(code, algo, session_id, iv_len, aad_len, src_len, dst_len, tag_len,
                           flag)
    if code in (AKCIPHER_SIGN, KX_DERIVE):
        src_len, dst_len = _U32X2.unpack_from(data, 24)
        return DataRequest(code, algo, session_id, src_len=src_len, dst_len=dst_len, flag=flag)
    raise WireError(VIRTIO_CRYPTO_NOTSUPP, f"data opcode {code:#x}")


def data_request_for(op: Op, session_id: int, *, src_len: int, dst_len: int,
                     iv_len: int = 0, aad_len: int = 0) -> DataRequest:
    """The header a driver sends for ``op``."""
    tag = AEAD_TAG_BYTES if op in (Op.AEAD_SEAL, Op.AEAD_OPEN) else 0
    return DataRequest(DATA_OPCODE[op], 0, session_id, iv_len, aad_len, src_len, dst_len, tag)

