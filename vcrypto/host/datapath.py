"""From a descriptor chain to a ``CryptoJob`` and back: the device's data path.

Sans-IO: given the vring, the device's memory and its session table, turn one
avail-ring head into either a validated request (job + where its result goes)
or an error status. Every check the design promises lives here:

1. chain structure: head and every ``next`` < queue size, no loops (at most
   ``num`` descriptors), an INDIRECT table is the whole chain, a multiple of
   16 bytes, at most ``num`` entries, not nested (virtio 1.2 §2.7.5.3.1);
   readable descriptors before writable ones (§2.7.4.2);
2. every buffer wholly inside one registered region (``GuestMemory``);
3. header: a known data opcode, lengths that add up within the readable and
   writable bytes actually supplied, within ``max_request_bytes``;
4. the session id is live *on this device* and its op matches the opcode;
5. per op: AEAD iv 12 bytes, tag 16, dst large enough; AES-CBC iv 16 bytes,
   whole blocks, the sym ``op_type`` matching the session (cipher or chain),
   a chain's offsets 0, lengths covering the whole src, ``hash_result_len`` the
   full digest (the vcrypto conventions in ``vcrypto.wire.virtio_crypto``).

A broken chain (1) yields no status location: the used element is
published with len 0, which the driver reads as VIRTIO_CRYPTO_ERR. Once
the chain parses, any later failure writes its status byte (the last
writable byte, ``virtio_crypto_inhdr``) and publishes len 1.
"""
from __future__ import annotations

import dataclasses
import struct

from vcrypto.host.memory import BadAddress, GuestMemory
from vcrypto.host.resources._base import CryptoJob
from vcrypto.host.sessions import Session, SessionTable
from vcrypto.ops import (
    AEAD_IV_BYTES, AEAD_TAG_BYTES, CHAIN_PARTS, CIPHER_BLOCK_BYTES, MAC_DIGEST_BYTES, Op, ecdh_secret_only,
    max_dst_bytes,
)
from vcrypto.shm.virtqueue import (
    DESC_BYTES, VIRTQ_DESC_F_INDIRECT, VIRTQ_DESC_F_NEXT, VIRTQ_DESC_F_WRITE,
    SplitVirtqueue, VirtqueueError,
)
from vcrypto.wire import virtio_crypto as vc


#: ``virtio_crypto_op_header`` + the first 24 bytes of the op's flf, one
#: unpack (the per-request path: no ``DataRequest`` object). AEAD flf:
#: iv_len, aad_len, src_len, dst_len, tag_len, reserved; akcipher/KX flf:
#: src_len, dst_len first (``vc.decode_data_request`` is the reference).
_HDR_FLF = struct.Struct("<IIQII6I")
_AEAD_CODES = (vc.AEAD_ENCRYPT, vc.AEAD_DECRYPT)
_SRC_DST_CODES = (vc.AKCIPHER_SIGN, vc.KX_DERIVE)
_SYM_CODES = (vc.CIPHER_ENCRYPT, vc.CIPHER_DECRYPT)
_U32 = struct.Struct("<I")
_CIPHER_OPS = (Op.CIPHER_ENCRYPT, Op.CIPHER_DECRYPT)
_CHAIN_OPS = (Op.CHAIN_SEAL, Op.CHAIN_OPEN)
#: one indirect descriptor (virtio 1.2 struct virtq_desc)
_DESC = struct.Struct("<QIHH")


class ChainError(Exception):
    """The chain itself is malformed; no status byte can be located."""


class RequestError(Exception):
    """The request is invalid; ``status`` goes into its inhdr."""

    def __init__(self, status: int, detail: str):
        super().__init__(detail)
        self.status = status


class BufferChain:
    """A list of buffers read or written as one byte stream."""

    __slots__ = ("views", "total")

    def __init__(self, views: list[memoryview]):
        self.views = views
        self.total = sum(map(len, views))

    def read(self, offset: int, length: int) -> bytes:
        if length == 0:
            return b""
        rel = offset
        for v in self.views:          # fast path: the range lies in one buffer
            n = len(v)
            if rel < n:
                if rel + length <= n:
                    return bytes(v[rel:rel + length])
                break
            rel -= n
        out = []                      # slow path: a field split across buffers
        for v in self.views:
            n = len(v)
            if offset >= n:
                offset -= n
                continue
            take = min(n - offset, length)
            out.append(v[offset:offset + take])
            length -= take
            offset = 0
            if not length:
                break
        return b"".join(out)

    def view(self, offset: int, length: int) -> memoryview | bytes:
        """``read`` without the copy when the range lies in one buffer: a
        view into the driver's memory (it keeps the mapping alive while
        held); split fields are joined into bytes."""
        rel = offset
        for v in self.views:
            n = len(v)
            if rel < n:
                if rel + length <= n:
                    return v[rel:rel + length]
                break
            rel -= n
        return self.read(offset, length)

    def write(self, offset: int, data: bytes) -> None:
        views = self.views
        if views and offset + len(data) <= len(views[0]):   # fast path: one buffer
            views[0][offset:offset + len(data)] = data
            return
        pos = 0
        for v in self.views:
            n = len(v)
            if offset >= n:
                offset -= n
                continue
            take = min(n - offset, len(data) - pos)
            v[offset:offset + take] = data[pos:pos + take]
            pos += take
            offset = 0
            if pos == len(data):
                return

    def release(self) -> None:
        for v in self.views:
            v.release()
        self.views = []


@dataclasses.dataclass(slots=True)
class Chain:
    head: int
    readable: BufferChain
    writable: BufferChain

    def release(self) -> None:
        self.readable.release()
        self.writable.release()


def walk_chain(vq: SplitVirtqueue, head: int, mem: GuestMemory) -> Chain:
    """Collect the chain's buffers; ``ChainError`` if it is structurally broken,
    ``_BadBuffer`` (chain intact, status byte locatable) if a buffer lies
    outside the registered regions."""
    num = vq.num
    if head >= num:
        raise ChainError(f"head {head} >= queue size {num}")
    addr, length, flags, nxt = vq.desc.read_raw(head)
    indirect_view = None
    if flags & VIRTQ_DESC_F_INDIRECT:
        if flags & VIRTQ_DESC_F_NEXT:
            raise ChainError("INDIRECT descriptor with NEXT set")
        if length == 0 or length % DESC_BYTES or length // DESC_BYTES > num:
            raise ChainError(f"indirect table of {length} bytes")
        try:
            indirect_view = mem.gpa_view(addr, length)
        except BadAddress as exc:
            raise ChainError(f"indirect table: {exc}") from exc
        limit = length // DESC_BYTES
        table = list(_DESC.iter_unpack(indirect_view))   # one C-level pass
        index = 0
    else:
        limit = num
        table = None
        index = head
    readable: list[memoryview | None] = []
    writable: list[memoryview | None] = []
    bad: str | None = None
    gpa_view = mem.gpa_view
    try:
        for _ in range(limit):
            if table is None:
                try:
                    addr, length, flags, nxt = vq.desc.read_raw(index)
                except VirtqueueError as exc:
                    raise ChainError(str(exc)) from exc
            else:
                if index >= limit:
                    raise ChainError(f"indirect next {index} outside table of {limit}")
                addr, length, flags, nxt = table[index]
            if flags & VIRTQ_DESC_F_INDIRECT:
                raise ChainError("nested or chained INDIRECT descriptor")
            try:
                view = gpa_view(addr, length)
            except BadAddress as exc:
                bad = bad or str(exc)
                view = None
            if flags & VIRTQ_DESC_F_WRITE:
                writable.append(view)
            else:
                if writable:
                    raise ChainError("device-readable descriptor after a writable one")
                readable.append(view)
            if not flags & VIRTQ_DESC_F_NEXT:
                break
            index = nxt
        else:
            raise ChainError(f"chain longer than {limit} descriptors (a loop)")
    finally:
        if indirect_view is not None:
            indirect_view.release()
    if not writable or writable[-1] is None or len(writable[-1]) < vc.INHDR_BYTES:
        raise ChainError("no writable status byte at the end of the chain")
    if bad is None:
        return Chain(head, BufferChain(readable), BufferChain(writable))
    chain = Chain(head, BufferChain([v for v in readable if v is not None]),
                  BufferChain([v for v in writable if v is not None]))
    if bad is not None:
        # Keep only the status byte so the caller can report ERR.
        status = writable[-1][-1:]
        chain.release()
        raise _BadBuffer(Chain(head, BufferChain([]), BufferChain([status])), bad)
    return chain


class _BadBuffer(Exception):
    def __init__(self, chain: Chain, detail: str):
        super().__init__(detail)
        self.chain = chain


@dataclasses.dataclass(slots=True)
class Request:
    """A validated request: the job, and where its result and status go."""

    chain: Chain
    session: Session | None
    job: CryptoJob | None
    dst_len: int
    status_offset: int       # in chain.writable
    error_status: int | None = None   # set when validation already failed
    error_detail: str = ""

    def finish(self, status: int, result: bytes = b"") -> int:
        """Write result + status in place; returns the used-element length."""
        written = 0
        if status == vc.VIRTIO_CRYPTO_OK:
            if len(result) > self.dst_len:
                status = vc.VIRTIO_CRYPTO_ERR     # result does not fit dst
            else:
                self.chain.writable.write(0, result)
                written = len(result)
        # The status byte is the last writable byte (walk_chain checked that
        # the last writable buffer holds it).
        self.chain.writable.views[-1][-1] = status
        self.chain.release()
        return written + vc.INHDR_BYTES


def parse_request(vq: SplitVirtqueue, head: int, mem: GuestMemory, sessions: SessionTable,
                  seq: int, max_request_bytes: int, stateless_aead: bool = False) -> Request:
    """Validate one request. Raises ``ChainError`` (no status), or returns a
    ``Request`` whose ``error_status`` is set when it already failed.
    ``stateless_aead``: the driver negotiated VIRTIO_CRYPTO_F_AEAD_STATELESS_MODE,
    so a request whose ``header.flag`` lacks SESSION_MODE carries its key."""
    try:
        chain = walk_chain(vq, head, mem)
    except _BadBuffer as bb:
        return _failed(bb.chain, vc.VIRTIO_CRYPTO_ERR, str(bb))
    status_offset = chain.writable.total - vc.INHDR_BYTES
    try:
        if chain.readable.total < vc.DATA_REQ_BYTES:
            raise RequestError(vc.VIRTIO_CRYPTO_ERR, "readable part shorter than the header")
        hdr = chain.readable.read(0, vc.DATA_REQ_BYTES)
        (opcode, _algo, session_id, flag, _pad, f0, f1, f2, f3, f4, _r) = \
            _HDR_FLF.unpack_from(hdr)
        if stateless_aead and not flag & vc.VIRTIO_CRYPTO_FLAG_SESSION_MODE:
            return _parse_stateless(chain, hdr, opcode, status_offset, seq, max_request_bytes)
        op_type = hash_len = c_off = c_len = h_off = h_len = 0
        if opcode in _AEAD_CODES:
            iv_len, aad_len, src_len, dst_len, tag_len = f0, f1, f2, f3, f4
        elif opcode in _SRC_DST_CODES:
            iv_len, aad_len, src_len, dst_len, tag_len = 0, 0, f0, f1, 0
        elif opcode in _SYM_CODES:
            tag_len = 0
            (op_type,) = _U32.unpack_from(hdr, vc.SYM_OP_TYPE_OFFSET)
            if op_type == vc.SYM_OP_CIPHER:
                iv_len, src_len, dst_len, aad_len = f0, f1, f2, 0
            elif op_type == vc.SYM_OP_CHAIN:
                (iv_len, src_len, dst_len, c_off, c_len, h_off, h_len, aad_len, hash_len,
                 _r) = vc.CHAIN_PARA.unpack_from(hdr, 24)
            else:
                raise RequestError(vc.VIRTIO_CRYPTO_NOTSUPP, f"sym op_type {op_type}")
        elif opcode == vc.MAC:
            iv_len, aad_len, src_len, hash_len, tag_len = 0, 0, f0, f1, 0
            dst_len = hash_len
        else:
            raise RequestError(vc.VIRTIO_CRYPTO_NOTSUPP, f"data opcode {opcode:#x}")
        inputs = iv_len + aad_len + src_len
        if inputs > max_request_bytes or dst_len > max_request_bytes:
            raise RequestError(vc.VIRTIO_CRYPTO_ERR, f"request over {max_request_bytes} bytes")
        if vc.DATA_REQ_BYTES + inputs > chain.readable.total:
            raise RequestError(vc.VIRTIO_CRYPTO_ERR,
                               f"header lengths need {inputs} input bytes, chain has "
                               f"{chain.readable.total - vc.DATA_REQ_BYTES}")
        if dst_len > status_offset:
            raise RequestError(vc.VIRTIO_CRYPTO_ERR,
                               f"dst_len {dst_len} but {status_offset} writable bytes")
        session = sessions.acquire(session_id)
        if session is None:
            raise RequestError(vc.VIRTIO_CRYPTO_INVSESS, f"session {session_id} unknown here")
        try:
            if session.opcode != opcode:
                raise RequestError(vc.VIRTIO_CRYPTO_ERR,
                                   f"opcode {opcode:#x} on a {session.op.value} session")
            op = session.op
            if op in (Op.AEAD_SEAL, Op.AEAD_OPEN):
                if iv_len != AEAD_IV_BYTES or tag_len != AEAD_TAG_BYTES:
                    raise RequestError(vc.VIRTIO_CRYPTO_ERR,
                                       f"iv_len {iv_len}/tag_len {tag_len}, need 12/16")
            elif opcode in _SYM_CODES or opcode == vc.MAC:
                dst_len = _check_sym(op, session.alg, op_type, iv_len, src_len, dst_len, hash_len,
                                     c_off, c_len, h_off, h_len)
                if dst_len > status_offset:
                    raise RequestError(vc.VIRTIO_CRYPTO_ERR,
                                       f"result of {dst_len} bytes but {status_offset} writable")
            elif iv_len or aad_len:
                raise RequestError(vc.VIRTIO_CRYPTO_ERR, "iv/aad on a non-AEAD request")
            need = max_dst_bytes(op, session.alg, src_len) \
                if op in (Op.AEAD_SEAL, Op.AEAD_OPEN) else 0
            if dst_len < need:
                raise RequestError(vc.VIRTIO_CRYPTO_ERR, f"dst_len {dst_len} < {need}")
            r = chain.readable
            off = vc.DATA_REQ_BYTES
            iv = r.read(off, iv_len)
            aad = r.read(off + iv_len, aad_len)
            if op in (Op.AEAD_SEAL, Op.AEAD_OPEN) or opcode in _SYM_CODES:
                # Zero copy: the cipher reads the record where the driver put
                # it (a job that has to wait is given bytes: DataQueue).
                src = r.view(off + iv_len + aad_len, src_len)
            else:
                src = r.read(off + iv_len + aad_len, src_len)
            job = CryptoJob(op=op, alg=session.alg, key=session.key, key_id=session.key_id,
                            src=src, iv=iv, aad=aad, seq=seq,
                            secret_only=op is Op.ECDH and ecdh_secret_only(session.alg, dst_len))
        except BaseException:
            sessions.release(session)
            raise
    except RequestError as exc:
        return _failed(chain, exc.status, str(exc))
    chain.readable.release()
    return Request(chain, session, job, dst_len, status_offset)


_STATELESS_OP = {vc.AEAD_ENCRYPT: (Op.AEAD_SEAL, vc.OP_ENCRYPT),
                 vc.AEAD_DECRYPT: (Op.AEAD_OPEN, vc.OP_DECRYPT)}


def _parse_stateless(chain: Chain, hdr: bytes, opcode: int, status_offset: int, seq: int,
                     max_request_bytes: int) -> Request:
    """A stateless AEAD request (the layout in ``vcrypto.wire.virtio_crypto``):
    the key is the first ``key_len`` readable bytes after the header, then iv,
    aad, src. Checked like a session's key at create (algo and key length),
    then like a session-mode AEAD request. Only AEAD has a stateless form here
    (the only feature offered): any other opcode is NOTSUPP."""
    try:
        kind = _STATELESS_OP.get(opcode)
        if kind is None:
            raise RequestError(vc.VIRTIO_CRYPTO_NOTSUPP,
                               f"stateless request with opcode {opcode:#x}: only AEAD")
        op, direction = kind
        (algo, key_len, sess_op, iv_len, tag_len, aad_len, src_len, dst_len) = \
            vc.AEAD_STATELESS_FLF.unpack_from(hdr, 24)
        if sess_op != direction:
            raise RequestError(vc.VIRTIO_CRYPTO_ERR,
                               f"stateless sess_para.op {sess_op} with opcode {opcode:#x}")
        try:
            alg = vc.aead_alg(algo, key_len)
        except vc.WireError as exc:
            raise RequestError(exc.status, f"stateless AEAD: {exc.detail}") from None
        if iv_len != AEAD_IV_BYTES or tag_len != AEAD_TAG_BYTES:
            raise RequestError(vc.VIRTIO_CRYPTO_ERR, f"iv_len {iv_len}/tag_len {tag_len}, need 12/16")
        inputs = key_len + iv_len + aad_len + src_len
        if inputs > max_request_bytes or dst_len > max_request_bytes:
            raise RequestError(vc.VIRTIO_CRYPTO_ERR, f"request over {max_request_bytes} bytes")
        if vc.DATA_REQ_BYTES + inputs > chain.readable.total:
            raise RequestError(vc.VIRTIO_CRYPTO_ERR,
                               f"header lengths need {inputs} input bytes, chain has "
                               f"{chain.readable.total - vc.DATA_REQ_BYTES}")
        need = max_dst_bytes(op, alg, src_len)
        if dst_len < need or dst_len > status_offset:
            raise RequestError(vc.VIRTIO_CRYPTO_ERR,
                               f"dst_len {dst_len}: need {need}..{status_offset} writable bytes")
        r = chain.readable
        off = vc.DATA_REQ_BYTES
        key = r.read(off, key_len)
        off += key_len
        iv = r.read(off, iv_len)
        aad = r.read(off + iv_len, aad_len)
        src = r.view(off + iv_len + aad_len, src_len)   # zero copy, as in session mode
    except RequestError as exc:
        return _failed(chain, exc.status, str(exc))
    chain.readable.release()
    session = Session(0, op, alg, key, stateless=True)
    job = CryptoJob(op=op, alg=alg, key=key, key_id=b"", src=src, iv=iv, aad=aad, seq=seq)
    return Request(chain, session, job, dst_len, status_offset)


def _check_sym(op: Op, alg, op_type: int, iv_len: int, src_len: int, dst_len: int,
               hash_len: int, c_off: int, c_len: int, h_off: int, h_len: int) -> int:
    """Checks of a cipher / chain / MAC request against its session; returns
    the bytes the result takes in the writable stream."""
    err = vc.VIRTIO_CRYPTO_ERR
    if op is Op.MAC:
        if hash_len != MAC_DIGEST_BYTES[alg]:
            raise RequestError(err, f"hash_result_len {hash_len}, need {MAC_DIGEST_BYTES[alg]}")
        return hash_len
    want_type = vc.SYM_OP_CIPHER if op in _CIPHER_OPS else vc.SYM_OP_CHAIN
    if op_type != want_type:
        raise RequestError(err, f"sym op_type {op_type} on a {op.value} session")
    if iv_len != CIPHER_BLOCK_BYTES:
        raise RequestError(err, f"iv_len {iv_len}, AES-CBC needs {CIPHER_BLOCK_BYTES}")
    if op in _CIPHER_OPS:
        text = src_len
    else:
        digest = MAC_DIGEST_BYTES[CHAIN_PARTS[alg][1]]
        text = src_len if op is Op.CHAIN_SEAL else src_len - digest
        if hash_len != digest or text < 0:
            raise RequestError(err, f"hash_result_len {hash_len} (src {src_len}), need {digest}")
        if c_off or h_off or c_len != text or h_len != text:
            raise RequestError(err, f"chain offsets {c_off}/{h_off}, lengths {c_len}/{h_len}: "
                                    f"need 0/0 and {text}/{text} (the whole text)")
    if text % CIPHER_BLOCK_BYTES:
        raise RequestError(err, f"AES-CBC text of {text} bytes is not whole 16-byte blocks")
    if op is Op.CHAIN_SEAL:
        if dst_len != text:
            raise RequestError(err, f"dst_len {dst_len}, encrypt-then-MAC needs {text}")
        return text + hash_len
    if dst_len < text:
        raise RequestError(err, f"dst_len {dst_len} < {text}")
    return dst_len


def _failed(chain: Chain, status: int, detail: str) -> Request:
    chain.readable.release()
    return Request(chain, None, None, 0, chain.writable.total - vc.INHDR_BYTES,
                   error_status=status, error_detail=detail)
