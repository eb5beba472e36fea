/* qemu TCG plugin: count the guest instructions a qemu-user process executes; write the total at exit.
 *
 *   qemu-aarch64 -plugin ./libinsn_count.so,outfile=COUNT_FILE PROGRAM ...
 *
 * Each translated block adds its instruction count to one counter every time it runs (an inline add,
 * no callback). The counter is shared and the add is not atomic: run a single-threaded guest (one
 * interpreter thread, OPENBLAS_NUM_THREADS=1), as bench/instructions.py does. Built against the
 * qemu-plugin.h of the installed qemu's source package: the plugin API version must match the binary.
 */
#include <inttypes.h>
#include <stdio.h>
#include <string.h>

#include <qemu-plugin.h>

QEMU_PLUGIN_EXPORT int qemu_plugin_version = QEMU_PLUGIN_VERSION;

static uint64_t insns;
static char outfile[4096];

static void tb_trans(qemu_plugin_id_t id, struct qemu_plugin_tb *tb)
{
    qemu_plugin_register_vcpu_tb_exec_inline(tb, QEMU_PLUGIN_INLINE_ADD_U64, &insns, qemu_plugin_tb_n_insns(tb));
}

static void at_exit(qemu_plugin_id_t id, void *p)
{
    FILE *f = outfile[0] ? fopen(outfile, "w") : stderr;
    if (f) {
        fprintf(f, "%" PRIu64 "\n", insns);
        if (f != stderr) {
            fclose(f);
        }
    }
}

QEMU_PLUGIN_EXPORT int qemu_plugin_install(qemu_plugin_id_t id, const qemu_info_t *info, int argc, char **argv)
{
    for (int i = 0; i < argc; i++) {
        if (strncmp(argv[i], "outfile=", 8) != 0 || strlen(argv[i] + 8) >= sizeof(outfile)) {
            fprintf(stderr, "insn_count: unknown or too long argument '%s' (expected outfile=PATH)\n", argv[i]);
            return -1;
        }
        strcpy(outfile, argv[i] + 8);
    }
    qemu_plugin_register_vcpu_tb_trans_cb(id, tb_trans);
    qemu_plugin_register_atexit_cb(id, at_exit, NULL);
    return 0;
}
