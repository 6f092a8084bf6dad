/* A C application that signs with a key whose CKA_ALWAYS_AUTHENTICATE is true (PKCS#11 3.0
 * §4.9: "the user has to supply the PIN for each use (sign or decrypt) with the key"):
 * C_SignInit, C_Login(CKU_CONTEXT_SPECIFIC), C_Sign; then the same without the login, and a
 * second use after one login. Prints each CK_RV. Usage: always_authenticate MODULE PIN */
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
typedef CK_RV (*fn_generate_key_pair)(CK_ULONG, CK_MECHANISM *, CK_ATTRIBUTE *, CK_ULONG,
                                      CK_ATTRIBUTE *, CK_ULONG, CK_ULONG *, CK_ULONG *);
typedef CK_RV (*fn_init)(CK_ULONG, CK_MECHANISM *, CK_ULONG);
typedef CK_RV (*fn_single)(CK_ULONG, unsigned char *, CK_ULONG, unsigned char *, CK_ULONG *);

#define CKM_EC_KEY_PAIR_GEN 0x1040
#define CKM_ECDSA 0x1041
#define CKA_TOKEN 0x1
#define CKA_PRIVATE 0x2
#define CKA_SIGN 0x108
#define CKA_VERIFY 0x10a
#define CKA_EC_PARAMS 0x180
#define CKA_ALWAYS_AUTHENTICATE 0x202

int main(int argc, char **argv) {
    if (argc != 3) { fprintf(stderr, "usage: always_authenticate MODULE PIN\n"); return 2; }
    void *module = dlopen(argv[1], RTLD_NOW);
    if (!module) { fprintf(stderr, "%s\n", dlerror()); return 3; }
#define F(type, name) ((type)dlsym(module, name))
    unsigned char *pin = (unsigned char *)argv[2];
    CK_ULONG pin_len = strlen(argv[2]);
    CK_ULONG slots[8], count = 8, session = 0, public_key = 0, private_key = 0, len = 0;
    unsigned char yes = 1, no = 0, digest[32] = {7}, signature[128];
    /* P-256: the DER of its OID. */
    unsigned char p256[] = {0x06, 0x08, 0x2a, 0x86, 0x48, 0xce, 0x3d, 0x03, 0x01, 0x07};
    CK_ATTRIBUTE public_template[] = {
        {CKA_TOKEN, &no, 1}, {CKA_VERIFY, &yes, 1}, {CKA_EC_PARAMS, p256, sizeof p256},
    };
    CK_ATTRIBUTE private_template[] = {
        {CKA_TOKEN, &no, 1}, {CKA_PRIVATE, &yes, 1}, {CKA_SIGN, &yes, 1},
        {CKA_ALWAYS_AUTHENTICATE, &yes, 1},
    };
    CK_MECHANISM keygen = {CKM_EC_KEY_PAIR_GEN, NULL, 0}, ecdsa = {CKM_ECDSA, NULL, 0};
    fn_login login = F(fn_login, "C_Login");
    CK_RV rv = F(fn_initialize, "C_Initialize")(NULL);
    if (!rv) rv = F(fn_get_slot_list, "C_GetSlotList")(1, slots, &count);
    if (!rv) rv = F(fn_open_session, "C_OpenSession")(slots[0], 6, NULL, NULL, &session);
    if (!rv) rv = login(session, 1, pin, pin_len);
    if (!rv)
        rv = F(fn_generate_key_pair, "C_GenerateKeyPair")(session, &keygen, public_template, 3,
                                                         private_template, 4, &public_key,
                                                         &private_key);
    printf("setup=0x%lx\n", rv);
    fn_init sign_init = F(fn_init, "C_SignInit");
    fn_single sign = F(fn_single, "C_Sign");

    printf("init=0x%lx\n", sign_init(session, &ecdsa, private_key));
    printf("context_login=0x%lx\n", login(session, 2, pin, pin_len));
    len = sizeof signature;
    printf("sign=0x%lx\n", sign(session, digest, sizeof digest, signature, &len));

    /* Each use needs its own login. */
    printf("init_again=0x%lx\n", sign_init(session, &ecdsa, private_key));
    len = sizeof signature;
    printf("sign_without_login=0x%lx\n", sign(session, digest, sizeof digest, signature, &len));
    return 0;
}
