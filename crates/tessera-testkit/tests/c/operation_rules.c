/* A C application that tries the rules of an operation's calls with an AES key and SHA-256,
 * printing each CK_RV. Usage: operation_rules MODULE PIN MODE, where MODE is
 * - failed: calls fail on arguments the library refuses before they reach the device, then the
 *   same operation starts again (PKCS#11 3.0 §5.2: a failed call ends its operation);
 * - mixed: single-part and multi-part calls of one operation (§5.8: C_Encrypt "cannot be used
 *   to terminate a multi-part operation");
 * - inits: each C_*Init returns its own errors, also when it was accepted before with another
 *   parameter or before this application or another one changed the key. */
#include <sys/wait.h>
#include <unistd.h>
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
typedef CK_RV (*fn_set)(CK_ULONG, CK_ULONG, CK_ATTRIBUTE *, CK_ULONG);
typedef CK_RV (*fn_destroy)(CK_ULONG, CK_ULONG);
typedef CK_RV (*fn_find_init)(CK_ULONG, CK_ATTRIBUTE *, CK_ULONG);
typedef CK_RV (*fn_find)(CK_ULONG, CK_ULONG *, CK_ULONG, CK_ULONG *);

#define CKM_AES_KEY_GEN 0x1080
#define CKM_AES_ECB 0x1081
#define CKM_AES_CBC 0x1082
#define CKM_ECDSA 0x1041
#define CKA_LABEL 0x3
#define CKA_DECRYPT 0x105
#define CKM_SHA256 0x250
#define CKA_TOKEN 0x1
#define CKA_ENCRYPT 0x104
#define CKA_VALUE_LEN 0x161
#define HUGE (1UL << 47)

int main(int argc, char **argv) {
    if (argc != 4) { fprintf(stderr, "usage: operation_rules MODULE PIN failed|mixed|inits\n"); return 2; }
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
        {CKA_DECRYPT, &no, 1},
    };
    CK_MECHANISM keygen = {CKM_AES_KEY_GEN, NULL, 0}, ecb = {CKM_AES_ECB, NULL, 0},
                 sha = {CKM_SHA256, NULL, 0};
    if (!rv) rv = F(fn_generate_key, "C_GenerateKey")(session, &keygen, template, 4, &key);
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
    } else if (strcmp(argv[3], "inits") == 0) {
        fn_init sign_init = F(fn_init, "C_SignInit");
        fn_init decrypt_init = F(fn_init, "C_DecryptInit");
        fn_set set_attribute = F(fn_set, "C_SetAttributeValue");
        fn_destroy destroy = F(fn_destroy, "C_DestroyObject");
        unsigned char iv[16] = {0};
        CK_MECHANISM unknown = {0x80001234UL, NULL, 0}, ecdsa = {CKM_ECDSA, NULL, 0},
                     cbc = {CKM_AES_CBC, iv, 16}, cbc_short = {CKM_AES_CBC, iv, 8};
        CK_ATTRIBUTE forbid[] = {{CKA_ENCRYPT, &no, 1}}, allow[] = {{CKA_ENCRYPT, &yes, 1}};
#define ENCRYPT(name) \
    do { len = sizeof out; printf(name "=0x%lx\n", encrypt(session, data, 16, out, &len)); } while (0)

        /* First use: each error the standard lists for the init. */
        printf("unknown_mechanism=0x%lx\n", encrypt_init(session, &unknown, key));
        printf("unknown_digest=0x%lx\n", digest_init(session, &unknown));
        printf("wrong_key_type=0x%lx\n", sign_init(session, &ecdsa, key));
        printf("short_iv=0x%lx\n", encrypt_init(session, &cbc_short, key));
        printf("no_such_key=0x%lx\n", encrypt_init(session, &ecb, 0x7777));
        printf("not_permitted=0x%lx\n", decrypt_init(session, &ecb, key));

        /* Accepted once: the same init with a fresh IV is accepted; a short IV is not. */
        printf("cbc_init=0x%lx\n", encrypt_init(session, &cbc, key));
        ENCRYPT("cbc_encrypt");
        iv[0] = 1;
        printf("cbc_again=0x%lx\n", encrypt_init(session, &cbc, key));
        printf("cbc_init_while_active=0x%lx\n", encrypt_init(session, &cbc, key));
        ENCRYPT("cbc_again_encrypt");
        printf("cbc_short_again=0x%lx\n", encrypt_init(session, &cbc_short, key));
        printf("digest_again=0x%lx\n", digest_init(session, &unknown));

        /* Changed by this application: an init held before the change reaches the device
         * first (its operation runs, as an init sent at once would); the next is judged. */
        printf("held_before_forbid=0x%lx\n", encrypt_init(session, &cbc, key));
        printf("forbid=0x%lx\n", set_attribute(session, key, forbid, 1));
        ENCRYPT("held_encrypt_after_forbid");
        printf("after_forbid=0x%lx\n", encrypt_init(session, &cbc, key));
        printf("allow=0x%lx\n", set_attribute(session, key, allow, 1));
        printf("after_allow=0x%lx\n", encrypt_init(session, &cbc, key));
        ENCRYPT("after_allow_encrypt");
        printf("destroy=0x%lx\n", destroy(session, key));
        printf("after_destroy=0x%lx\n", encrypt_init(session, &cbc, key));

        /* Changed by another application (a child process with its own connection): the
         * remembered verdict lets the init through, but the device judges it again with the
         * call, which does nothing and reports the init's error; the next init is judged. */
        CK_ATTRIBUTE shared[] = {
            {CKA_TOKEN, &yes, 1}, {CKA_ENCRYPT, &yes, 1}, {CKA_LABEL, "shared", 6},
            {CKA_VALUE_LEN, &value_len, sizeof value_len},
        };
        CK_ULONG token_key = 0;
        printf("token_key=0x%lx\n", F(fn_generate_key, "C_GenerateKey")(session, &keygen, shared, 4, &token_key));
        printf("token_init=0x%lx\n", encrypt_init(session, &cbc, token_key));
        ENCRYPT("token_encrypt");
        fflush(stdout);
        pid_t child = fork();
        if (child == 0) {
            CK_ULONG other = 0, found = 0, n = 0;
            CK_RV r = F(fn_initialize, "C_Initialize")(NULL);
            if (!r) r = F(fn_open_session, "C_OpenSession")(slots[0], 6, NULL, NULL, &other);
            CK_RV l = r ? r : F(fn_login, "C_Login")(other, 1, (unsigned char *)argv[2], strlen(argv[2]));
            if (l && l != 0x100) r = l;
            if (!r) r = F(fn_find_init, "C_FindObjectsInit")(other, shared + 2, 1);
            if (!r) r = F(fn_find, "C_FindObjects")(other, &found, 1, &n);
            if (!r && n != 1) r = 0xFFFF;
            if (!r) r = set_attribute(other, found, forbid, 1);
            _exit(r ? 1 : 0);
        }
        int status = 0;
        waitpid(child, &status, 0);
        printf("other_forbids=%d\n", WIFEXITED(status) ? WEXITSTATUS(status) : -1);
        printf("stale_init=0x%lx\n", encrypt_init(session, &cbc, token_key));
        memset(out, 0xEE, sizeof out);
        ENCRYPT("stale_encrypt");
        printf("stale_output_untouched=%d\n", out[0] == 0xEE && out[15] == 0xEE);
        printf("judged_again=0x%lx\n", encrypt_init(session, &cbc, token_key));
        printf("cleanup=0x%lx\n", destroy(session, token_key));
    } else {
        fprintf(stderr, "unknown mode %s\n", argv[3]);
        return 2;
    }
    return 0;
}
