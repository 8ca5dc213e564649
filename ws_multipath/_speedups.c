/* ws_multipath._speedups: the C form of ws_multipath.protocol.unmask.
 *
 * Optional: setup.py builds it when it can, and protocol.py falls back to the
 * pure-Python path when it is missing (or WS_MULTIPATH_NO_SPEEDUPS=1).
 *
 *     unmask(data, start, end, mask) -> bytes
 *         data[start:end] XORed with the 4-byte mask (RFC 6455 section 5.3),
 *         as a new bytes object; data is left as it is.
 *     mask_into(buffer, start, end, mask) -> None
 *         the same XOR, in place, in a writable buffer (a bytearray).
 *     unmask_joined(chunks, start, end, mask) -> bytes
 *         unmask(b"".join(chunks), start, end, mask) without the join: a
 *         large frame that came in many reads is unmasked from them straight
 *         into its message (one allocation and one pass instead of two).
 *
 *     parse_messages(data, max_payload, lenient) -> (list, int)
 *         the complete, unfragmented, masked text and binary frames at the
 *         start of data (bytes or bytearray), unmasked: text decoded from
 *         UTF-8 (strictly, or with replacement when lenient), binary as
 *         bytes; and the offset where they end. It stops at the first frame
 *         that is anything else (incomplete, fragmented, control, compressed,
 *         reserved bits, unmasked, a length over max_payload or not in its
 *         shortest form, text that is not UTF-8), which the caller parses
 *         as before: the Python loop of FrameReader._parse_whole_messages.
 *     frame(first_byte, data) -> bytes
 *         one unmasked frame (RFC 6455 section 5.2): first_byte (FIN, RSV,
 *         opcode), the shortest length form, then data, which is a str
 *         (sent as UTF-8; a compact ASCII str is copied as it is) or bytes
 *         or bytearray. One allocation, where Python needs three.
 *     send_nowait(sock, data[, more]) -> int
 *         one non-blocking send(2) of data on sock (anything with fileno()),
 *         with MSG_MORE when more is true (the kernel holds a partial segment
 *         for the frames that follow: see sync/corking.py),
 *         the bytes sent, 0 if the socket is full (EAGAIN), OSError
 *         otherwise. It keeps the GIL through the send(2) (the call cannot
 *         block, and letting the GIL go is a hand-off when other threads
 *         wait for it), except in a thread that sends again within 100 us
 *         of its last send, which lets it go as socket.send does: keeping
 *         it always, a thread sending in a loop let the others in only at
 *         the interpreter's switch interval, and 50 such threads starved
 *         new clients' handshakes for seconds (issue 18). The transport uses it for small frames only. The
 *         descriptor is read under the GIL, right before the call, as
 *         socket.send reads it. Not built on Windows.
 *
 *     send_message(sock, data[, more]) -> int or (int, bytes)
 *         frame(0x81 for str, 0x82 for bytes or bytearray, data) sent as by
 *         send_nowait, without making the frame an object: it is built in a
 *         buffer of its own (on the stack when small) and sent from there.
 *         The frame's length when all of it went; when the socket took only
 *         part of it (or nothing), (the frame's length, the bytes it did not
 *         take), which the caller writes once the socket drains. OSError as
 *         send_nowait. For the small data messages of an echo or a chat:
 *         the transport calls it with its write lock held (sync/transport.py).
 *     recv_nowait(sock, size[, flags]) -> bytes or None
 *         one non-blocking recv(2) of at most size bytes (flags, such as
 *         MSG_PEEK, added to MSG_DONTWAIT): the bytes read (b"" at the end
 *         of the stream), None when nothing is there (EAGAIN); OSError
 *         otherwise. It keeps the GIL (the call cannot block: the loop
 *         calls it for a socket its selector found readable), which
 *         socket.recv lets go and takes back around every read.
 *     shutdown_now(sock, how) -> None
 *         shutdown(2), which never blocks, with the GIL kept: on a loop's
 *         thread, letting the GIL go around a call that cannot wait only
 *         invites another thread to take it. OSError as socket.shutdown. *
 * data is any bytes-like object (bytes, bytearray, memoryview of bytes) and
 * mask any bytes-like object of exactly 4 bytes; 0 <= start <= end <= len(data).
 *
 * The XOR runs 8 bytes at a time with a 64-bit key: single bytes until the
 * output is 8-byte aligned, then whole words (four per round), then the tail
 * byte by byte. The key is rotated to the mask phase at which the words start,
 * so any start and any alignment give the bytes a byte-by-byte loop would.
 * Loads and stores go through memcpy, which compilers turn into plain word
 * moves (and which stays correct where unaligned loads would trap).
 */

#define PY_SSIZE_T_CLEAN
#include <Python.h>

#include <limits.h>
#include <stdint.h>
#include <string.h>

#ifndef _WIN32
#include <errno.h>
#include <sys/socket.h>
#include <sys/types.h>
#include <time.h>
#endif

static void
xor_mask(const unsigned char *src, unsigned char *dst, Py_ssize_t size, const unsigned char mask[4])
{
    Py_ssize_t i = 0;

    if (size >= 16) {
        /* Single bytes until dst is aligned to 8 (src may stay unaligned). */
        while (((uintptr_t)(dst + i) & 7) != 0) {
            dst[i] = src[i] ^ mask[i & 3];
            i++;
        }
        unsigned char key_bytes[8];
        for (int j = 0; j < 8; j++) {
            key_bytes[j] = mask[(i + j) & 3];
        }
        uint64_t key;
        memcpy(&key, key_bytes, 8);

        Py_ssize_t words_end = i + ((size - i) & ~(Py_ssize_t)31);
        for (; i < words_end; i += 32) {
            uint64_t a, b, c, d;
            memcpy(&a, src + i, 8);
            memcpy(&b, src + i + 8, 8);
            memcpy(&c, src + i + 16, 8);
            memcpy(&d, src + i + 24, 8);
            a ^= key;
            b ^= key;
            c ^= key;
            d ^= key;
            memcpy(dst + i, &a, 8);
            memcpy(dst + i + 8, &b, 8);
            memcpy(dst + i + 16, &c, 8);
            memcpy(dst + i + 24, &d, 8);
        }
        words_end = i + ((size - i) & ~(Py_ssize_t)7);
        for (; i < words_end; i += 8) {
            uint64_t a;
            memcpy(&a, src + i, 8);
            a ^= key;
            memcpy(dst + i, &a, 8);
        }
    }
    /* The tail (and small payloads): byte by byte, at the phase reached. */
    for (; i < size; i++) {
        dst[i] = src[i] ^ mask[i & 3];
    }
}

/* xor_mask for a piece that starts `phase` bytes into the masked payload. */
static void
xor_mask_at(const unsigned char *src, unsigned char *dst, Py_ssize_t size, const unsigned char mask[4], Py_ssize_t phase)
{
    unsigned char rotated[4];
    for (int j = 0; j < 4; j++) {
        rotated[j] = mask[(phase + j) & 3];
    }
    xor_mask(src, dst, size, rotated);
}

static int
parse_mask(PyObject *obj, unsigned char mask[4])
{
    if (PyBytes_CheckExact(obj)) {
        if (PyBytes_GET_SIZE(obj) != 4) {
            PyErr_Format(PyExc_ValueError, "mask must be 4 bytes, not %zd", PyBytes_GET_SIZE(obj));
            return -1;
        }
        memcpy(mask, PyBytes_AS_STRING(obj), 4);
        return 0;
    }
    Py_buffer key;
    if (PyObject_GetBuffer(obj, &key, PyBUF_SIMPLE) < 0) {
        return -1;
    }
    if (key.len != 4) {
        PyErr_Format(PyExc_ValueError, "mask must be 4 bytes, not %zd", key.len);
        PyBuffer_Release(&key);
        return -1;
    }
    memcpy(mask, key.buf, 4);
    PyBuffer_Release(&key);
    return 0;
}

/* Parse (data, start, end, mask); on success the caller releases *data. */
static int
parse_args(PyObject *const *args, Py_ssize_t nargs, const char *name, int writable, Py_buffer *data,
           Py_ssize_t *start, Py_ssize_t *end, unsigned char mask[4])
{
    if (nargs != 4) {
        PyErr_Format(PyExc_TypeError, "%s() takes exactly 4 arguments (%zd given)", name, nargs);
        return -1;
    }
    *start = PyLong_AsSsize_t(args[1]);
    if (*start == -1 && PyErr_Occurred()) {
        return -1;
    }
    *end = PyLong_AsSsize_t(args[2]);
    if (*end == -1 && PyErr_Occurred()) {
        return -1;
    }

    if (parse_mask(args[3], mask) < 0) {
        return -1;
    }

    if (PyObject_GetBuffer(args[0], data, writable ? PyBUF_WRITABLE : PyBUF_SIMPLE) < 0) {
        return -1;
    }
    if (*start < 0 || *end < *start || *end > data->len) {
        PyErr_Format(PyExc_ValueError, "need 0 <= start <= end <= len(data), got start=%zd end=%zd len=%zd",
                     *start, *end, data->len);
        PyBuffer_Release(data);
        return -1;
    }
    return 0;
}

PyDoc_STRVAR(unmask_doc,
"unmask(data, start, end, mask) -> bytes\n\n"
"data[start:end] XORed with the 4-byte mask, as new bytes (data is not changed).");

static PyObject *
speedups_unmask(PyObject *module, PyObject *const *args, Py_ssize_t nargs)
{
    Py_buffer data;
    Py_ssize_t start, end;
    unsigned char mask[4];

    if (parse_args(args, nargs, "unmask", 0, &data, &start, &end, mask) < 0) {
        return NULL;
    }
    PyObject *result = PyBytes_FromStringAndSize(NULL, end - start);
    if (result != NULL) {
        xor_mask((const unsigned char *)data.buf + start, (unsigned char *)PyBytes_AS_STRING(result), end - start, mask);
    }
    PyBuffer_Release(&data);
    return result;
}

PyDoc_STRVAR(mask_into_doc,
"mask_into(buffer, start, end, mask) -> None\n\n"
"XOR buffer[start:end] with the 4-byte mask in place (buffer must be writable).");

static PyObject *
speedups_mask_into(PyObject *module, PyObject *const *args, Py_ssize_t nargs)
{
    Py_buffer data;
    Py_ssize_t start, end;
    unsigned char mask[4];

    if (parse_args(args, nargs, "mask_into", 1, &data, &start, &end, mask) < 0) {
        return NULL;
    }
    unsigned char *buf = (unsigned char *)data.buf + start;
    xor_mask(buf, buf, end - start, mask);
    PyBuffer_Release(&data);
    Py_RETURN_NONE;
}

PyDoc_STRVAR(unmask_joined_doc,
"unmask_joined(chunks, start, end, mask) -> bytes\n\n"
"unmask(b''.join(chunks), start, end, mask) without joining: the payload is\n"
"unmasked from the chunks straight into the new bytes (one pass, one allocation).");

static PyObject *
speedups_unmask_joined(PyObject *module, PyObject *const *args, Py_ssize_t nargs)
{
    Py_ssize_t start, end;
    unsigned char mask[4];

    if (nargs != 4) {
        PyErr_Format(PyExc_TypeError, "unmask_joined() takes exactly 4 arguments (%zd given)", nargs);
        return NULL;
    }
    start = PyLong_AsSsize_t(args[1]);
    if (start == -1 && PyErr_Occurred()) {
        return NULL;
    }
    end = PyLong_AsSsize_t(args[2]);
    if (end == -1 && PyErr_Occurred()) {
        return NULL;
    }
    if (start < 0 || end < start) {
        PyErr_Format(PyExc_ValueError, "need 0 <= start <= end, got start=%zd end=%zd", start, end);
        return NULL;
    }
    if (parse_mask(args[3], mask) < 0) {
        return NULL;
    }
    /* A tuple of its own: nothing done below can change it under our feet. */
    PyObject *chunks = PySequence_Tuple(args[0]);
    if (chunks == NULL) {
        return NULL;
    }
    PyObject *result = PyBytes_FromStringAndSize(NULL, end - start);
    if (result == NULL) {
        Py_DECREF(chunks);
        return NULL;
    }
    unsigned char *out = (unsigned char *)PyBytes_AS_STRING(result);
    Py_ssize_t position = 0, written = 0;  /* of the chunks joined; of the result */
    Py_ssize_t count = PyTuple_GET_SIZE(chunks);
    for (Py_ssize_t index = 0; index < count && position < end; index++) {
        Py_buffer chunk;
        if (PyObject_GetBuffer(PyTuple_GET_ITEM(chunks, index), &chunk, PyBUF_SIMPLE) < 0) {
            Py_DECREF(result);
            Py_DECREF(chunks);
            return NULL;
        }
        Py_ssize_t low = start > position ? start : position;
        Py_ssize_t high = end < position + chunk.len ? end : position + chunk.len;
        if (low < high) {
            xor_mask_at((const unsigned char *)chunk.buf + (low - position), out + written, high - low, mask, written);
            written += high - low;
        }
        position += chunk.len;
        PyBuffer_Release(&chunk);
    }
    Py_DECREF(chunks);
    if (written != end - start) {
        PyErr_Format(PyExc_ValueError, "end=%zd is past the %zd bytes of the chunks", end, position);
        Py_DECREF(result);
        return NULL;
    }
    return result;
}

PyDoc_STRVAR(parse_messages_doc,
"parse_messages(data, max_payload, lenient) -> (list, int)\n\n"
"The whole masked text and binary frames at the start of data, unmasked\n"
"(text decoded), and the offset where they end.");

static PyObject *
speedups_parse_messages(PyObject *module, PyObject *const *args, Py_ssize_t nargs)
{
    if (nargs != 3) {
        PyErr_SetString(PyExc_TypeError, "parse_messages() takes exactly 3 arguments");
        return NULL;
    }
    if (!PyBytes_Check(args[0]) && !PyByteArray_Check(args[0])) {
        PyErr_Format(PyExc_TypeError, "data must be bytes or bytearray, not %.100s", Py_TYPE(args[0])->tp_name);
        return NULL;
    }
    int overflow;
    long long max_payload = PyLong_AsLongLongAndOverflow(args[1], &overflow);
    if (max_payload == -1 && PyErr_Occurred()) {
        return NULL;
    }
    if (overflow > 0) {
        max_payload = LLONG_MAX;  /* more than any length a frame can declare (2**63 - 1) */
    } else if (overflow < 0) {
        max_payload = 0;
    }
    int lenient = PyObject_IsTrue(args[2]);
    if (lenient < 0) {
        return NULL;
    }
    const char *errors = lenient ? "replace" : "strict";
    PyObject *messages = PyList_New(0);
    if (messages == NULL) {
        return NULL;
    }
    Py_buffer view;
    if (PyObject_GetBuffer(args[0], &view, PyBUF_SIMPLE) < 0) {
        Py_DECREF(messages);
        return NULL;
    }
    const unsigned char *data = (const unsigned char *)view.buf;
    Py_ssize_t end_of_data = view.len, pos = 0;
    unsigned char small[256];
    while (end_of_data - pos >= 2) {
        unsigned char first = data[pos], second = data[pos + 1];
        if ((first != 0x81 && first != 0x82) || !(second & 0x80)) {
            break;
        }
        uint64_t length = second & 0x7F;
        Py_ssize_t start;
        if (length < 126) {
            start = pos + 6;
        } else if (length == 126) {
            if (end_of_data - pos < 4) {
                break;
            }
            length = ((uint64_t)data[pos + 2] << 8) | data[pos + 3];
            if (length < 126) {
                break;
            }
            start = pos + 8;
        } else {
            if (end_of_data - pos < 10) {
                break;
            }
            length = 0;
            for (int i = 0; i < 8; i++) {
                length = (length << 8) | data[pos + 2 + i];
            }
            if (length < 65536 || (length >> 63)) {
                break;
            }
            start = pos + 14;
        }
        if (max_payload < 0 || length > (uint64_t)max_payload) {  /* negative: nothing fits, as in Python */
            break;
        }
        if (start > end_of_data || length > (uint64_t)(end_of_data - start)) {
            break;  /* incomplete */
        }
        Py_ssize_t size = (Py_ssize_t)length;
        const unsigned char *mask = data + start - 4;
        PyObject *message;
        if (first == 0x82) {
            message = PyBytes_FromStringAndSize(NULL, size);
            if (message == NULL) {
                goto error;
            }
            xor_mask(data + start, (unsigned char *)PyBytes_AS_STRING(message), size, mask);
        } else {
            unsigned char *text = size <= (Py_ssize_t)sizeof(small) ? small : (unsigned char *)PyMem_Malloc((size_t)size);
            if (text == NULL) {
                PyErr_NoMemory();
                goto error;
            }
            xor_mask(data + start, text, size, mask);
            message = PyUnicode_DecodeUTF8((const char *)text, size, errors);
            if (text != small) {
                PyMem_Free(text);
            }
            if (message == NULL) {
                if (!PyErr_ExceptionMatches(PyExc_UnicodeDecodeError)) {
                    goto error;
                }
                PyErr_Clear();  /* the caller's loop fails it with 1007 */
                break;
            }
        }
        int appended = PyList_Append(messages, message);
        Py_DECREF(message);
        if (appended < 0) {
            goto error;
        }
        pos = start + size;
    }
    PyBuffer_Release(&view);
    PyObject *result = Py_BuildValue("(Nn)", messages, pos);
    return result;
error:
    PyBuffer_Release(&view);
    Py_DECREF(messages);
    return NULL;
}

PyDoc_STRVAR(frame_doc,
"frame(first_byte, data) -> bytes\n\n"
"An unmasked frame: first_byte, the length, then data (a str as UTF-8,\n"
"or bytes or bytearray).");

static PyObject *
speedups_frame(PyObject *module, PyObject *const *args, Py_ssize_t nargs)
{
    if (nargs != 2) {
        PyErr_SetString(PyExc_TypeError, "frame() takes exactly 2 arguments");
        return NULL;
    }
    long first = PyLong_AsLong(args[0]);
    if (first == -1 && PyErr_Occurred()) {
        return NULL;
    }
    if (first < 0 || first > 255) {
        PyErr_SetString(PyExc_ValueError, "first_byte must be in 0..255");
        return NULL;
    }
    PyObject *data = args[1];
    PyObject *encoded = NULL;
    Py_buffer view;
    int have_view = 0;
    const char *source;
    Py_ssize_t size;
    if (PyUnicode_Check(data)) {
        if (PyUnicode_IS_COMPACT_ASCII(data)) {
            source = (const char *)PyUnicode_DATA(data);
            size = PyUnicode_GET_LENGTH(data);
        } else {
            encoded = PyUnicode_AsUTF8String(data);  /* a lone surrogate raises, as str.encode does */
            if (encoded == NULL) {
                return NULL;
            }
            source = PyBytes_AS_STRING(encoded);
            size = PyBytes_GET_SIZE(encoded);
        }
    } else if (PyBytes_Check(data) || PyByteArray_Check(data)) {
        if (PyObject_GetBuffer(data, &view, PyBUF_SIMPLE) < 0) {
            return NULL;
        }
        have_view = 1;
        source = (const char *)view.buf;
        size = view.len;
    } else {
        PyErr_Format(PyExc_TypeError, "data must be str, bytes or bytearray, not %.100s", Py_TYPE(data)->tp_name);
        return NULL;
    }
    Py_ssize_t header = size < 126 ? 2 : size < 65536 ? 4 : 10;
    PyObject *out = NULL;
    if (size <= PY_SSIZE_T_MAX - header) {
        out = PyBytes_FromStringAndSize(NULL, header + size);
    } else {
        PyErr_NoMemory();
    }
    if (out != NULL) {
        unsigned char *p = (unsigned char *)PyBytes_AS_STRING(out);
        p[0] = (unsigned char)first;
        if (size < 126) {
            p[1] = (unsigned char)size;
        } else if (size < 65536) {
            p[1] = 126;
            p[2] = (unsigned char)(size >> 8);
            p[3] = (unsigned char)size;
        } else {
            uint64_t length = (uint64_t)size;
            p[1] = 127;
            for (int i = 0; i < 8; i++) {
                p[2 + i] = (unsigned char)(length >> (56 - 8 * i));
            }
        }
        memcpy(p + header, source, (size_t)size);
    }
    if (have_view) {
        PyBuffer_Release(&view);
    }
    Py_XDECREF(encoded);
    return out;
}

#ifndef _WIN32
#define STREAMING_NS 100000  /* 100 us */

PyDoc_STRVAR(send_nowait_doc,
"send_nowait(sock, data[, more]) -> int\n\n"
"One non-blocking send of data on sock (with MSG_MORE when more is true;\n"
"the GIL is released around it only in a thread sending in a loop): the\n"
"bytes sent, 0 when the socket buffer is full; OSError on any other failure.");

/* The socket's descriptor, read under the GIL as socket.send reads it (-1
 * once closed: EBADF then). */
static int
socket_fd(PyObject *sock, int *fd)
{
    static PyObject *fileno_name = NULL;
    if (fileno_name == NULL) {
        fileno_name = PyUnicode_InternFromString("fileno");
        if (fileno_name == NULL) {
            return -1;
        }
    }
    PyObject *fileno = PyObject_CallMethodNoArgs(sock, fileno_name);
    if (fileno == NULL) {
        return -1;
    }
    long value = PyLong_AsLong(fileno);
    Py_DECREF(fileno);
    if (value == -1 && PyErr_Occurred()) {
        return -1;
    }
    if (value < 0 || value > INT32_MAX) {  /* closed: what socket.send raises then */
        errno = EBADF;
        PyErr_SetFromErrno(PyExc_OSError);
        return -1;
    }
    *fd = (int)value;
    return 0;
}

/* One non-blocking send(2) with the GIL policy described in send_nowait:
 * the bytes sent, 0 when the socket is full, -1 with OSError set. */
static Py_ssize_t
send_once(int fd, const char *buf, size_t len, int more)
{
    int flags = MSG_DONTWAIT;
#ifdef MSG_NOSIGNAL
    flags |= MSG_NOSIGNAL;
#endif
#ifdef MSG_MORE
    if (more) {
        flags |= MSG_MORE;
    }
#endif
    ssize_t sent;
    int error;
    /* A thread that sends again within STREAMING_NS of its last send (it is
     * streaming: a loop of sends with no blocking call between them) lets
     * the GIL go around send(2), as socket.send does; others keep it (the
     * call cannot block). Letting it go is a hand-off whenever another
     * thread waits for the GIL (futex wake, wait, two context switches:
     * about 6 to 12 us of server CPU per message on the 16-client echo,
     * whose threads let it go in recv() between sends anyway); keeping it
     * always, threads that stream let the others in only at the
     * interpreter's switch interval, and 50 of them starved new clients'
     * handshakes for seconds (issue 18). */
    static __thread int64_t last_send_ns = INT64_MIN / 2;
    struct timespec now;
    clock_gettime(CLOCK_MONOTONIC, &now);
    int64_t now_ns = (int64_t)now.tv_sec * 1000000000 + now.tv_nsec;
    int streaming = now_ns - last_send_ns < STREAMING_NS;
    last_send_ns = now_ns;
    if (streaming) {
        Py_BEGIN_ALLOW_THREADS
        do {
            sent = send(fd, buf, len, flags);
        } while (sent < 0 && errno == EINTR);
        error = errno;
        Py_END_ALLOW_THREADS
    }
    else {
        do {
            sent = send(fd, buf, len, flags);
        } while (sent < 0 && errno == EINTR);
        error = errno;
    }
    if (sent < 0) {
        if (error == EAGAIN || error == EWOULDBLOCK) {
            return 0;
        }
        errno = error;
        PyErr_SetFromErrno(PyExc_OSError);
        return -1;
    }
    return (Py_ssize_t)sent;
}

static PyObject *
speedups_send_nowait(PyObject *module, PyObject *const *args, Py_ssize_t nargs)
{
    if (nargs != 2 && nargs != 3) {
        PyErr_SetString(PyExc_TypeError, "send_nowait() takes 2 or 3 arguments");
        return NULL;
    }
    int more = 0;
    if (nargs == 3) {
        more = PyObject_IsTrue(args[2]);
        if (more < 0) {
            return NULL;
        }
    }
    int fd;
    if (socket_fd(args[0], &fd) < 0) {
        return NULL;
    }
    Py_buffer data;
    if (PyObject_GetBuffer(args[1], &data, PyBUF_SIMPLE) < 0) {
        return NULL;
    }
    Py_ssize_t sent = send_once(fd, (const char *)data.buf, (size_t)data.len, more);
    PyBuffer_Release(&data);
    if (sent < 0) {
        return NULL;
    }
    return PyLong_FromSsize_t(sent);
}

PyDoc_STRVAR(recv_nowait_doc,
"recv_nowait(sock, size[, flags]) -> bytes or None\n\n"
"One non-blocking recv of at most size bytes (flags added to MSG_DONTWAIT;\n"
"the GIL kept): the bytes, b'' at the end of the stream, None when nothing\n"
"is there; OSError otherwise.");

static PyObject *
speedups_recv_nowait(PyObject *module, PyObject *const *args, Py_ssize_t nargs)
{
    if (nargs != 2 && nargs != 3) {
        PyErr_SetString(PyExc_TypeError, "recv_nowait() takes 2 or 3 arguments");
        return NULL;
    }
    int flags = MSG_DONTWAIT;
    if (nargs == 3) {
        long extra = PyLong_AsLong(args[2]);
        if (extra == -1 && PyErr_Occurred()) {
            return NULL;
        }
        flags |= (int)extra;
    }
    Py_ssize_t size = PyLong_AsSsize_t(args[1]);
    if (size == -1 && PyErr_Occurred()) {
        return NULL;
    }
    if (size < 0) {
        PyErr_SetString(PyExc_ValueError, "negative buffersize in recv_nowait");
        return NULL;
    }
    int fd;
    if (socket_fd(args[0], &fd) < 0) {
        return NULL;
    }
    PyObject *data = PyBytes_FromStringAndSize(NULL, size);
    if (data == NULL) {
        return NULL;
    }
    ssize_t received;
    do {
        received = recv(fd, PyBytes_AS_STRING(data), (size_t)size, flags);
    } while (received < 0 && errno == EINTR);
    if (received < 0) {
        Py_DECREF(data);
        if (errno == EAGAIN || errno == EWOULDBLOCK) {
            Py_RETURN_NONE;
        }
        return PyErr_SetFromErrno(PyExc_OSError);
    }
    if (received != size && _PyBytes_Resize(&data, (Py_ssize_t)received) < 0) {
        return NULL;
    }
    return data;
}

PyDoc_STRVAR(shutdown_now_doc,
"shutdown_now(sock, how) -> None\n\n"
"shutdown(2) of sock (it never blocks), with the GIL kept; OSError as\n"
"socket.shutdown.");

static PyObject *
speedups_shutdown_now(PyObject *module, PyObject *const *args, Py_ssize_t nargs)
{
    if (nargs != 2) {
        PyErr_SetString(PyExc_TypeError, "shutdown_now() takes exactly 2 arguments");
        return NULL;
    }
    int fd;
    if (socket_fd(args[0], &fd) < 0) {
        return NULL;
    }
    long how = PyLong_AsLong(args[1]);
    if (how == -1 && PyErr_Occurred()) {
        return NULL;
    }
    if (shutdown(fd, (int)how) < 0) {
        return PyErr_SetFromErrno(PyExc_OSError);
    }
    Py_RETURN_NONE;
}

PyDoc_STRVAR(send_message_doc,
"send_message(sock, data[, more]) -> int or (int, bytes)\n\n"
"Frame data (str: text, bytes or bytearray: binary) and send it as\n"
"send_nowait does: the frame's length when the socket took all of it, else\n"
"(the frame's length, the bytes it did not take).");

#define SEND_STACK 2048

static PyObject *
speedups_send_message(PyObject *module, PyObject *const *args, Py_ssize_t nargs)
{
    if (nargs != 2 && nargs != 3) {
        PyErr_SetString(PyExc_TypeError, "send_message() takes 2 or 3 arguments");
        return NULL;
    }
    int more = 0;
    if (nargs == 3) {
        more = PyObject_IsTrue(args[2]);
        if (more < 0) {
            return NULL;
        }
    }
    PyObject *data = args[1];
    PyObject *encoded = NULL;
    const char *source;
    Py_ssize_t size;
    unsigned char first;
    if (PyUnicode_Check(data)) {
        first = 0x81;
        if (PyUnicode_IS_COMPACT_ASCII(data)) {
            source = (const char *)PyUnicode_DATA(data);
            size = PyUnicode_GET_LENGTH(data);
        } else {
            encoded = PyUnicode_AsUTF8String(data);  /* a lone surrogate raises, as str.encode does */
            if (encoded == NULL) {
                return NULL;
            }
            source = PyBytes_AS_STRING(encoded);
            size = PyBytes_GET_SIZE(encoded);
        }
    } else if (PyBytes_Check(data)) {
        first = 0x82;
        source = PyBytes_AS_STRING(data);
        size = PyBytes_GET_SIZE(data);
    } else if (PyByteArray_Check(data)) {
        first = 0x82;
        source = PyByteArray_AS_STRING(data);
        size = PyByteArray_GET_SIZE(data);
    } else {
        PyErr_Format(PyExc_TypeError, "data must be str, bytes or bytearray, not %.100s", Py_TYPE(data)->tp_name);
        return NULL;
    }
    int fd;
    if (socket_fd(args[0], &fd) < 0) {
        Py_XDECREF(encoded);
        return NULL;
    }
    Py_ssize_t header = size < 126 ? 2 : size < 65536 ? 4 : 10;
    if (size > PY_SSIZE_T_MAX - header) {
        Py_XDECREF(encoded);
        return PyErr_NoMemory();
    }
    Py_ssize_t total = header + size;
    unsigned char stack[SEND_STACK];
    unsigned char *p = total <= SEND_STACK ? stack : (unsigned char *)PyMem_Malloc((size_t)total);
    if (p == NULL) {
        Py_XDECREF(encoded);
        return PyErr_NoMemory();
    }
    p[0] = first;
    if (size < 126) {
        p[1] = (unsigned char)size;
    } else if (size < 65536) {
        p[1] = 126;
        p[2] = (unsigned char)(size >> 8);
        p[3] = (unsigned char)size;
    } else {
        uint64_t length = (uint64_t)size;
        p[1] = 127;
        for (int i = 0; i < 8; i++) {
            p[2 + i] = (unsigned char)(length >> (56 - 8 * i));
        }
    }
    memcpy(p + header, source, (size_t)size);  /* a copy: a bytearray may change once the GIL goes */
    Py_XDECREF(encoded);
    Py_ssize_t sent = send_once(fd, (const char *)p, (size_t)total, more);
    PyObject *result;
    if (sent < 0) {
        result = NULL;
    } else if (sent == total) {
        result = PyLong_FromSsize_t(total);
    } else {
        result = Py_BuildValue("(ny#)", total, (const char *)p + sent, total - sent);
    }
    if (p != stack) {
        PyMem_Free(p);
    }
    return result;
}
#endif

static PyMethodDef speedups_methods[] = {
    {"unmask", (PyCFunction)(void (*)(void))speedups_unmask, METH_FASTCALL, unmask_doc},
    {"mask_into", (PyCFunction)(void (*)(void))speedups_mask_into, METH_FASTCALL, mask_into_doc},
    {"unmask_joined", (PyCFunction)(void (*)(void))speedups_unmask_joined, METH_FASTCALL, unmask_joined_doc},
    {"frame", (PyCFunction)(void (*)(void))speedups_frame, METH_FASTCALL, frame_doc},
    {"parse_messages", (PyCFunction)(void (*)(void))speedups_parse_messages, METH_FASTCALL, parse_messages_doc},
#ifndef _WIN32
    {"send_nowait", (PyCFunction)(void (*)(void))speedups_send_nowait, METH_FASTCALL, send_nowait_doc},
    {"send_message", (PyCFunction)(void (*)(void))speedups_send_message, METH_FASTCALL, send_message_doc},
    {"recv_nowait", (PyCFunction)(void (*)(void))speedups_recv_nowait, METH_FASTCALL, recv_nowait_doc},
    {"shutdown_now", (PyCFunction)(void (*)(void))speedups_shutdown_now, METH_FASTCALL, shutdown_now_doc},
#endif
    {NULL, NULL, 0, NULL},
};

static struct PyModuleDef speedups_module = {
    PyModuleDef_HEAD_INIT,
    "ws_multipath._speedups",
    "C speedups for ws_multipath (optional; see ws_multipath.protocol.SPEEDUPS).",
    0,
    speedups_methods,
    NULL,
    NULL,
    NULL,
    NULL,
};

PyMODINIT_FUNC
PyInit__speedups(void)
{
    return PyModuleDef_Init(&speedups_module);
}
