/* An application that encrypts COUNT buffers of SIZE bytes with AES-256-GCM under a session key
 * (each a C_EncryptInit and one C_Encrypt into its own output buffer), then decrypts the last
 * one and checks it, as a bulk user does. It makes no copy of the data itself: whatever copies
 * a profiler sees in this process are the library's.
 * Usage: bulk_calls MODULE PIN COUNT SIZE */
#include <dlfcn.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

typedef unsigned long CK_ULONG;
typedef CK_ULONG CK_RV;
typedef struct { CK_ULONG type; void *value; CK_ULONG len; } CK_ATTRIBUTE;
typedef struct { CK_ULONG mechanism; void *parameter; CK_ULONG len; } CK_MECHANISM;
typedef struct {
    unsigned char *iv; CK_ULONG iv_len; CK_ULONG iv_bits;
    unsigned char *aad; CK_ULONG aad_len; CK_ULONG tag_bits;
} CK_GCM_PARAMS;
typedef CK_RV (*fn_initialize)(void *);
typedef CK_RV (*fn_get_slot_list)(unsigned char, CK_ULONG *, CK_ULONG *);
typedef CK_RV (*fn_open_session)(CK_ULONG, CK_ULONG, void *, void *, CK_ULONG *);
typedef CK_RV (*fn_login)(CK_ULONG, CK_ULONG, unsigned char *, CK_ULONG);
typedef CK_RV (*fn_generate_key)(CK_ULONG, CK_MECHANISM *, CK_ATTRIBUTE *, CK_ULONG, CK_ULONG *);
typedef CK_RV (*fn_crypt_init)(CK_ULONG, CK_MECHANISM *, CK_ULONG);
typedef CK_RV (*fn_crypt)(CK_ULONG, unsigned char *, CK_ULONG, unsigned char *, CK_ULONG *);

#define CKA_VALUE_LEN 0x161
#define CKA_ENCRYPT 0x104
#define CKA_DECRYPT 0x105
#define CKM_AES_KEY_GEN 0x1080
#define CKM_AES_GCM 0x1087

int main(int argc, char **argv) {
    if (argc != 5) { fprintf(stderr, "usage: bulk_calls MODULE PIN COUNT SIZE\n"); return 2; }
    void *module = dlopen(argv[1], RTLD_NOW);
    if (!module) { fprintf(stderr, "%s\n", dlerror()); return 3; }
    CK_ULONG count = strtoul(argv[3], NULL, 10), size = strtoul(argv[4], NULL, 10);
    unsigned char *in = malloc(size), *out = malloc(size + 16), *back = malloc(size + 16);
    if (!in || !out || !back) { fprintf(stderr, "out of memory\n"); return 4; }
    for (CK_ULONG i = 0; i < size; i++) in[i] = (unsigned char)(i * 7 + 3);

    CK_ULONG list[8], slots = 8, session = 0, key = 0, key_len = 32;
    unsigned char yes_byte = 1, iv[12] = {1, 2, 3};
    CK_ATTRIBUTE key_template[] = {
        { CKA_VALUE_LEN, &key_len, sizeof key_len },
        { CKA_ENCRYPT, &yes_byte, 1 },
        { CKA_DECRYPT, &yes_byte, 1 },
    };
    CK_MECHANISM keygen = { CKM_AES_KEY_GEN, NULL, 0 };
    CK_GCM_PARAMS params = { iv, sizeof iv, 96, NULL, 0, 128 };
    CK_MECHANISM gcm = { CKM_AES_GCM, &params, sizeof params };
    CK_RV rv = ((fn_initialize)dlsym(module, "C_Initialize"))(NULL);
    if (!rv) rv = ((fn_get_slot_list)dlsym(module, "C_GetSlotList"))(1, list, &slots);
    if (!rv) rv = ((fn_open_session)dlsym(module, "C_OpenSession"))(list[0], 6, NULL, NULL, &session);
    if (!rv) rv = ((fn_login)dlsym(module, "C_Login"))(session, 1, (unsigned char *)argv[2], strlen(argv[2]));
    if (!rv) rv = ((fn_generate_key)dlsym(module, "C_GenerateKey"))(session, &keygen, key_template, 3, &key);
    printf("setup=0x%lx\n", rv);
    if (rv) return 1;
    fn_crypt_init encrypt_init = (fn_crypt_init)dlsym(module, "C_EncryptInit");
    fn_crypt encrypt = (fn_crypt)dlsym(module, "C_Encrypt");
    CK_ULONG out_len = 0;
    for (CK_ULONG i = 0; i < count && !rv; i++) {
        out_len = size + 16;
        rv = encrypt_init(session, &gcm, key);
        if (!rv) rv = encrypt(session, in, size, out, &out_len);
    }
    printf("encrypted=0x%lx len=%lu\n", rv, out_len);
    CK_ULONG back_len = size + 16;
    if (!rv) rv = ((fn_crypt_init)dlsym(module, "C_DecryptInit"))(session, &gcm, key);
    if (!rv) rv = ((fn_crypt)dlsym(module, "C_Decrypt"))(session, out, out_len, back, &back_len);
    printf("decrypted=0x%lx same=%d\n", rv, !rv && back_len == size && !memcmp(in, back, size));
    return rv ? 1 : 0;
}
