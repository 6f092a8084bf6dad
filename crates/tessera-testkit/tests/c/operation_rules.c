/* A C application that tries the rules of an operation's calls with an AES key and SHA-256,
 * printing each CK_RV. Usage: operation_rules MODULE PIN MODE, where MODE is
 * - failed: calls fail on arguments the library refuses before they reach the device, then the
 *   same operation starts again (PKCS#11 3.0 §5.2: a failed call ends its operation);
 * - mixed: single-part and multi-part calls of one operation (§5.8: C_Encrypt "cannot be used
 *   to terminate a multi-part operation"). */
#include <dlfcn.h>
#include <stdio.h>
#include <string.h>

typedef unsigned long CK_ULONG;
typedef CK_ULONG CK_RV;
typedef struct { CK_ULONG type; void *value; CK_ULONG len; } CK_ATTRIBUTE;
typedef struct { CK_ULONG mechanism; void *parameter; CK_ULONG len; } CK_MECHANISM;
typedef CK_RV (*fn_initialize)(void *);
typedef CK_RV (*fn_get_slot_list)(unsigned char, CK_ULONG *, CK_ULONG *);
typedef CK_RV (*fn_open_session)(CK_ULONG, CK_ULONG, void *, void *, CK_ULONG *);
typedef CK_RV (*fn_login)(CK_ULONG, CK_ULONG, unsigned char *, CK_ULONG);
typedef CK_RV (*fn_generate_key)(CK_ULONG, CK_MECHANISM *, CK_ATTRIBUTE *, CK_ULONG, CK_ULONG *);
typedef CK_RV (*fn_init)(CK_ULONG, CK_MECHANISM *, CK_ULONG);
typedef CK_RV (*fn_digest_init)(CK_ULONG, CK_MECHANISM *);
typedef CK_RV (*fn_single)(CK_ULONG, unsigned char *, CK_ULONG, unsigned char *, CK_ULONG *);

#define CKM_AES_KEY_GEN 0x1080
#define CKM_AES_ECB 0x1081
#define CKM_SHA256 0x250
#define CKA_TOKEN 0x1
#define CKA_ENCRYPT 0x104
#define CKA_VALUE_LEN 0x161
#define HUGE (1UL << 47)

int main(int argc, char **argv) {
    if (argc != 4) { fprintf(stderr, "usage: operation_rules MODULE PIN failed|mixed\n"); return 2; }
    void *module = dlopen(argv[1], RTLD_NOW);
    if (!module) { fprintf(stderr, "%s\n", dlerror()); return 3; }
#define F(type, name) ((type)dlsym(module, name))
    CK_ULONG slots[8], count = 8, session = 0, key = 0, len = 0;
    unsigned char data[16] = {0}, out[64];
    CK_RV rv = F(fn_initialize, "C_Initialize")(NULL);
    if (!rv) rv = F(fn_get_slot_list, "C_GetSlotList")(1, slots, &count);
    if (!rv) rv = F(fn_open_session, "C_OpenSession")(slots[0], 6, NULL, NULL, &session);
    if (!rv) rv = F(fn_login, "C_Login")(session, 1, (unsigned char *)argv[2], strlen(argv[2]));
    unsigned char yes = 1, no = 0;
    CK_ULONG value_len = 32;
    CK_ATTRIBUTE template[] = {
        {CKA_TOKEN, &no, 1}, {CKA_ENCRYPT, &yes, 1}, {CKA_VALUE_LEN, &value_len, sizeof value_len},
    };
    CK_MECHANISM keygen = {CKM_AES_KEY_GEN, NULL, 0}, ecb = {CKM_AES_ECB, NULL, 0},
                 sha = {CKM_SHA256, NULL, 0};
    if (!rv) rv = F(fn_generate_key, "C_GenerateKey")(session, &keygen, template, 3, &key);
    printf("setup=0x%lx\n", rv);
    fn_init encrypt_init = F(fn_init, "C_EncryptInit");
    fn_single encrypt = F(fn_single, "C_Encrypt");
    fn_single encrypt_update = F(fn_single, "C_EncryptUpdate");
    fn_digest_init digest_init = F(fn_digest_init, "C_DigestInit");
    fn_single digest = F(fn_single, "C_Digest");

    typedef CK_RV (*fn_final)(CK_ULONG, unsigned char *, CK_ULONG *);
    fn_final encrypt_final = F(fn_final, "C_EncryptFinal");

    if (strcmp(argv[3], "failed") == 0) {
        /* The init held by the library: C_Encrypt without pulEncryptedDataLen. */
        printf("held_init=0x%lx\n", encrypt_init(session, &ecb, key));
        printf("held_encrypt_null_len=0x%lx\n", encrypt(session, data, 16, out, NULL));
        printf("held_init_again=0x%lx\n", encrypt_init(session, &ecb, key));
        len = sizeof out;
        printf("held_encrypt=0x%lx\n", encrypt(session, data, 16, out, &len));

        /* An operation running on the device: an update, then one with an absurd length. */
        printf("live_init=0x%lx\n", encrypt_init(session, &ecb, key));
        len = sizeof out;
        printf("live_update=0x%lx\n", encrypt_update(session, data, 16, out, &len));
        len = sizeof out;
        printf("live_update_huge=0x%lx\n", encrypt_update(session, data, HUGE, out, &len));
        printf("live_init_again=0x%lx\n", encrypt_init(session, &ecb, key));
        len = sizeof out;
        printf("live_encrypt=0x%lx\n", encrypt(session, data, 16, out, &len));

        /* A digest with an absurd length. */
        printf("digest_init=0x%lx\n", digest_init(session, &sha));
        len = sizeof out;
        printf("digest_huge=0x%lx\n", digest(session, data, HUGE, out, &len));
        printf("digest_init_again=0x%lx\n", digest_init(session, &sha));
        len = sizeof out;
        printf("digest=0x%lx\n", digest(session, data, 16, out, &len));
    } else if (strcmp(argv[3], "mixed") == 0) {
        /* A multi-part operation: C_Encrypt may not end it. */
        printf("multi_init=0x%lx\n", encrypt_init(session, &ecb, key));
        len = sizeof out;
        printf("multi_update=0x%lx\n", encrypt_update(session, data, 16, out, &len));
        len = sizeof out;
        printf("multi_encrypt=0x%lx\n", encrypt(session, data, 16, out, &len));
        printf("multi_encrypt_query=0x%lx\n", encrypt(session, data, 16, NULL, &len));
        len = sizeof out;
        printf("multi_final=0x%lx\n", encrypt_final(session, out, &len));

        /* A single-part operation whose length was asked: no update or final in between. */
        printf("single_init=0x%lx\n", encrypt_init(session, &ecb, key));
        len = 0;
        rv = encrypt(session, data, 16, NULL, &len);
        printf("single_query=0x%lx len=%lu\n", rv, len);
        len = sizeof out;
        printf("single_update=0x%lx\n", encrypt_update(session, data, 16, out, &len));
        len = sizeof out;
        printf("single_final=0x%lx\n", encrypt_final(session, out, &len));
        len = sizeof out;
        rv = encrypt(session, data, 16, out, &len);
        printf("single_encrypt=0x%lx len=%lu\n", rv, len);
        printf("init_after=0x%lx\n", encrypt_init(session, &ecb, key));
        len = sizeof out;
        printf("encrypt_after=0x%lx\n", encrypt(session, data, 16, out, &len));
    } else {
        fprintf(stderr, "unknown mode %s\n", argv[3]);
        return 2;
    }
    return 0;
}
