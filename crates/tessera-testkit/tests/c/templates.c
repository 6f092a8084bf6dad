/* A C application that uses wrap and unwrap templates (CKA_WRAP_TEMPLATE,
 * CKA_UNWRAP_TEMPLATE: attribute arrays of CK_ATTRIBUTEs, PKCS#11 3.0 §4.8) as applications
 * pass them, and reads one back with the three-step C_GetAttributeValue of arrays.
 * Usage: templates MODULE SLOT PIN. Prints "templates ok" when every check holds. */
#include <dlfcn.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

typedef unsigned long CK_ULONG;
typedef CK_ULONG CK_RV;
typedef struct { CK_ULONG type; void *pValue; CK_ULONG ulValueLen; } CK_ATTRIBUTE;
typedef struct { CK_ULONG mechanism; void *pParameter; CK_ULONG ulParameterLen; } CK_MECHANISM;

#define CKA_CLASS 0x0UL
#define CKA_LABEL 0x3UL
#define CKA_KEY_TYPE 0x100UL
#define CKA_SENSITIVE 0x103UL
#define CKA_WRAP 0x106UL
#define CKA_UNWRAP 0x107UL
#define CKA_VALUE 0x11UL
#define CKA_EXTRACTABLE 0x162UL
#define CKA_WRAP_TEMPLATE 0x40000211UL
#define CKA_UNWRAP_TEMPLATE 0x40000212UL
#define CKO_SECRET_KEY 4UL
#define CKK_AES 0x1fUL
#define CKM_AES_KEY_WRAP 0x2109UL
#define CKR_KEY_NOT_WRAPPABLE 0x69UL
#define CKR_TEMPLATE_INCONSISTENT 0xd1UL

typedef CK_RV (*fn_initialize)(void *);
typedef CK_RV (*fn_open_session)(CK_ULONG, CK_ULONG, void *, void *, CK_ULONG *);
typedef CK_RV (*fn_login)(CK_ULONG, CK_ULONG, unsigned char *, CK_ULONG);
typedef CK_RV (*fn_create)(CK_ULONG, CK_ATTRIBUTE *, CK_ULONG, CK_ULONG *);
typedef CK_RV (*fn_get)(CK_ULONG, CK_ULONG, CK_ATTRIBUTE *, CK_ULONG);
typedef CK_RV (*fn_wrap)(CK_ULONG, CK_MECHANISM *, CK_ULONG, CK_ULONG, unsigned char *, CK_ULONG *);
typedef CK_RV (*fn_unwrap)(CK_ULONG, CK_MECHANISM *, CK_ULONG, unsigned char *, CK_ULONG,
                           CK_ATTRIBUTE *, CK_ULONG, CK_ULONG *);

static void *module;
static void *symbol(const char *name) {
    void *f = dlsym(module, name);
    if (!f) { fprintf(stderr, "missing %s\n", name); exit(10); }
    return f;
}
#define CHECK(call, want) do { CK_RV r_ = (call); if (r_ != (want)) { \
    fprintf(stderr, "line %d: %s gave 0x%lx, wanted 0x%lx\n", __LINE__, #call, r_, (CK_ULONG)(want)); \
    exit(20); } } while (0)

static CK_ULONG class = CKO_SECRET_KEY, aes = CKK_AES;
static unsigned char yes = 1, no = 0;

static CK_ULONG aes_key(fn_create create, CK_ULONG session, const char *label, unsigned char fill,
                        CK_ATTRIBUTE *extra, CK_ULONG extras) {
    unsigned char value[16];
    memset(value, fill, sizeof value);
    CK_ATTRIBUTE t[10] = {
        {CKA_CLASS, &class, sizeof class}, {CKA_KEY_TYPE, &aes, sizeof aes},
        {CKA_VALUE, value, sizeof value}, {CKA_LABEL, (void *)label, strlen(label)},
        {CKA_EXTRACTABLE, &yes, 1}, {CKA_SENSITIVE, &no, 1},
    };
    for (CK_ULONG i = 0; i < extras; i++) t[6 + i] = extra[i];
    CK_ULONG handle = 0;
    CHECK(create(session, t, 6 + extras, &handle), 0);
    return handle;
}

int main(int argc, char **argv) {
    if (argc != 4) { fprintf(stderr, "usage: templates MODULE SLOT PIN\n"); return 2; }
    module = dlopen(argv[1], RTLD_NOW);
    if (!module) { fprintf(stderr, "%s\n", dlerror()); return 3; }
    fn_initialize initialize = symbol("C_Initialize");
    fn_open_session open_session = symbol("C_OpenSession");
    fn_login login = symbol("C_Login");
    fn_create create = symbol("C_CreateObject");
    fn_get get = symbol("C_GetAttributeValue");
    fn_wrap wrap = symbol("C_WrapKey");
    fn_unwrap unwrap = symbol("C_UnwrapKey");
    CK_ULONG session = 0;
    CHECK(initialize(NULL), 0);
    CHECK(open_session(strtoul(argv[2], NULL, 10), 6, NULL, NULL, &session), 0);
    CHECK(login(session, 1, (unsigned char *)argv[3], strlen(argv[3])), 0);

    /* The wrapping key wraps only keys labelled "wrappable"; what it unwraps is never
     * extractable. */
    const char *wrappable = "wrappable";
    CK_ATTRIBUTE wrap_rule[] = {{CKA_LABEL, (void *)wrappable, strlen(wrappable)}};
    CK_ATTRIBUTE unwrap_rule[] = {{CKA_EXTRACTABLE, &no, 1}};
    CK_ATTRIBUTE rules[] = {
        {CKA_WRAP, &yes, 1}, {CKA_UNWRAP, &yes, 1},
        {CKA_WRAP_TEMPLATE, wrap_rule, sizeof wrap_rule},
        {CKA_UNWRAP_TEMPLATE, unwrap_rule, sizeof unwrap_rule},
    };
    CK_ULONG kek = aes_key(create, session, "kek", 1, rules, 4);
    CK_ULONG good = aes_key(create, session, "wrappable", 2, NULL, 0);
    CK_ULONG other = aes_key(create, session, "other", 3, NULL, 0);

    CK_MECHANISM mechanism = {CKM_AES_KEY_WRAP, NULL, 0};
    unsigned char wrapped[64];
    CK_ULONG wrapped_len = sizeof wrapped;
    CHECK(wrap(session, &mechanism, kek, good, wrapped, &wrapped_len), 0);
    unsigned char spare[64];
    CK_ULONG spare_len = sizeof spare;
    CHECK(wrap(session, &mechanism, kek, other, spare, &spare_len), CKR_KEY_NOT_WRAPPABLE);

    CK_ATTRIBUTE plain[] = {{CKA_CLASS, &class, sizeof class}, {CKA_KEY_TYPE, &aes, sizeof aes}};
    CK_ULONG unwrapped = 0;
    CHECK(unwrap(session, &mechanism, kek, wrapped, wrapped_len, plain, 2, &unwrapped), 0);
    unsigned char extractable = 9;
    CK_ATTRIBUTE ask = {CKA_EXTRACTABLE, &extractable, 1};
    CHECK(get(session, unwrapped, &ask, 1), 0);
    if (extractable != 0) { fprintf(stderr, "the unwrap template was not applied\n"); return 21; }
    CK_ATTRIBUTE against[] = {{CKA_CLASS, &class, sizeof class}, {CKA_KEY_TYPE, &aes, sizeof aes},
                              {CKA_EXTRACTABLE, &yes, 1}};
    CHECK(unwrap(session, &mechanism, kek, wrapped, wrapped_len, against, 3, &unwrapped),
          CKR_TEMPLATE_INCONSISTENT);

    /* Reading an array back: its size, then each element's type and length, then values. */
    CK_ATTRIBUTE read = {CKA_WRAP_TEMPLATE, NULL, 0};
    CHECK(get(session, kek, &read, 1), 0);
    if (read.ulValueLen != sizeof(CK_ATTRIBUTE)) { fprintf(stderr, "array size %lu\n", read.ulValueLen); return 22; }
    CK_ATTRIBUTE element = {0, NULL, 0};
    read.pValue = &element;
    CHECK(get(session, kek, &read, 1), 0);
    if (element.type != CKA_LABEL || element.ulValueLen != strlen(wrappable)) {
        fprintf(stderr, "element 0x%lx of %lu bytes\n", element.type, element.ulValueLen); return 23;
    }
    char label[32] = {0};
    element.pValue = label;
    CHECK(get(session, kek, &read, 1), 0);
    if (strcmp(label, wrappable) != 0) { fprintf(stderr, "label %s\n", label); return 24; }
    printf("templates ok\n");
    return 0;
}
