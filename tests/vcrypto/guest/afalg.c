/* Guest side of the QEMU test: AES-CBC through AF_ALG with the kernel
 * driver named on the command line (e.g. virtio_crypto_aes_cbc), so a
 * failed virtio self-test cannot silently fall back to aes-generic.
 *
 *   afalg DRIVER KEYHEX IVHEX SEED OUTDIR SIZE...
 *
 * For each SIZE: plaintext = xorshift32 byte stream seeded with SEED ^ SIZE
 * (the host test regenerates it), encrypt -> OUTDIR/ct.SIZE, decrypt the
 * ciphertext again through the same driver and compare with the plaintext.
 * Prints "afalg SIZE enc ok dec ok" per size, "afalg FAIL ..." on error.
 * With SIZE prefixed by "bench:" it times N encryptions instead (bench/).
 */
#include <linux/if_alg.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <time.h>
#include <unistd.h>

#ifndef SOL_ALG
#define SOL_ALG 279
#endif

static int unhex(const char *s, unsigned char *out, size_t max) {
    size_t n = strlen(s) / 2;
    if (n > max) return -1;
    for (size_t i = 0; i < n; i++) {
        unsigned int b;
        if (sscanf(s + 2 * i, "%2x", &b) != 1) return -1;
        out[i] = (unsigned char)b;
    }
    return (int)n;
}

static void stream(uint32_t seed, unsigned char *buf, size_t n) {
    uint32_t x = seed ? seed : 1;
    for (size_t i = 0; i < n; i++) {
        x ^= x << 13; x ^= x >> 17; x ^= x << 5;
        buf[i] = (unsigned char)x;
    }
}

static int tfm_fd(const char *driver, const unsigned char *key, int keylen) {
    struct sockaddr_alg sa = {.salg_family = AF_ALG};
    strcpy((char *)sa.salg_type, "skcipher");
    strncpy((char *)sa.salg_name, driver, sizeof(sa.salg_name) - 1);
    int fd = socket(AF_ALG, SOCK_SEQPACKET, 0);
    if (fd < 0) { perror("afalg FAIL socket"); return -1; }
    if (bind(fd, (struct sockaddr *)&sa, sizeof(sa)) < 0) { perror("afalg FAIL bind"); return -1; }
    if (setsockopt(fd, SOL_ALG, ALG_SET_KEY, key, keylen) < 0) {
        perror("afalg FAIL setkey"); return -1;
    }
    return fd;
}

/* one operation: op = ALG_OP_ENCRYPT / ALG_OP_DECRYPT */
static int crypt_once(int tfm, int op, const unsigned char *iv, const unsigned char *in,
                      unsigned char *out, size_t n) {
    int fd = accept(tfm, NULL, 0);
    if (fd < 0) { perror("afalg FAIL accept"); return -1; }
    char cbuf[CMSG_SPACE(4) + CMSG_SPACE(sizeof(struct af_alg_iv) + 16)] = {0};
    struct msghdr msg = {0};
    msg.msg_control = cbuf;
    msg.msg_controllen = sizeof(cbuf);
    struct cmsghdr *c = CMSG_FIRSTHDR(&msg);
    c->cmsg_level = SOL_ALG; c->cmsg_type = ALG_SET_OP; c->cmsg_len = CMSG_LEN(4);
    memcpy(CMSG_DATA(c), &op, 4);
    c = CMSG_NXTHDR(&msg, c);
    c->cmsg_level = SOL_ALG; c->cmsg_type = ALG_SET_IV;
    c->cmsg_len = CMSG_LEN(sizeof(struct af_alg_iv) + 16);
    struct af_alg_iv *aiv = (struct af_alg_iv *)CMSG_DATA(c);
    aiv->ivlen = 16;
    memcpy(aiv->iv, iv, 16);
    size_t done = 0;
    while (done < n) {   /* the socket takes at most its sndbuf per sendmsg */
        struct iovec io = {(void *)(in + done), n - done};
        msg.msg_iov = &io; msg.msg_iovlen = 1;
        msg.msg_flags = 0;
        ssize_t s = sendmsg(fd, &msg, 0);
        if (s <= 0) { perror("afalg FAIL sendmsg"); close(fd); return -1; }
        msg.msg_control = NULL; msg.msg_controllen = 0;
        ssize_t r, got = 0;
        while (got < s) {
            r = read(fd, out + done + got, s - got);
            if (r <= 0) { perror("afalg FAIL read"); close(fd); return -1; }
            got += r;
        }
        done += s;
    }
    close(fd);
    return 0;
}

int main(int argc, char **argv) {
    if (argc < 7) { fprintf(stderr, "usage: afalg DRIVER KEY IV SEED OUTDIR SIZE...\n"); return 2; }
    unsigned char key[32], iv[16];
    int keylen = unhex(argv[2], key, sizeof key);
    if (keylen <= 0 || unhex(argv[3], iv, sizeof iv) != 16) { fprintf(stderr, "bad key/iv\n"); return 2; }
    uint32_t seed = (uint32_t)strtoul(argv[4], NULL, 0);
    int tfm = tfm_fd(argv[1], key, keylen);
    if (tfm < 0) return 1;
    int rc = 0;
    for (int a = 6; a < argc; a++) {
        int bench = strncmp(argv[a], "bench:", 6) == 0;
        size_t n = strtoul(argv[a] + (bench ? 6 : 0), NULL, 0);
        unsigned char *pt = malloc(n), *ct = malloc(n), *back = malloc(n);
        stream(seed ^ (uint32_t)n, pt, n);
        if (bench) {
            /* encrypt repeatedly for ~1 s of guest time; report bytes/s */
            struct timespec t0, t1;
            clock_gettime(CLOCK_MONOTONIC, &t0);
            long iters = 0;
            double dt = 0;
            do {
                if (crypt_once(tfm, ALG_OP_ENCRYPT, iv, pt, ct, n)) { rc = 1; break; }
                iters++;
                clock_gettime(CLOCK_MONOTONIC, &t1);
                dt = (t1.tv_sec - t0.tv_sec) + (t1.tv_nsec - t0.tv_nsec) / 1e9;
            } while (dt < 1.0);
            printf("afalg bench %s %zu %ld %.6f\n", argv[1], n, iters, dt);
        } else if (crypt_once(tfm, ALG_OP_ENCRYPT, iv, pt, ct, n) == 0 &&
                   crypt_once(tfm, ALG_OP_DECRYPT, iv, ct, back, n) == 0) {
            char path[256];
            snprintf(path, sizeof path, "%s/ct.%zu", argv[5], n);
            FILE *f = fopen(path, "wb");
            if (!f || fwrite(ct, 1, n, f) != n) { perror("afalg FAIL write"); rc = 1; }
            if (f) fclose(f);
            int same = memcmp(back, pt, n) == 0;
            printf("afalg %zu enc ok dec %s\n", n, same ? "ok" : "MISMATCH");
            if (!same) rc = 1;
        } else {
            printf("afalg FAIL %zu\n", n);
            rc = 1;
        }
        free(pt); free(ct); free(back);
        fflush(stdout);
    }
    return rc;
}
