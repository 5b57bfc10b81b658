/*
 * A spec-conforming Add SDR for OpenIPMI's ipmi_sim: a loadable module that replaces the built-in
 * handler of Add SDR (NetFn Storage 0x0A, cmd 0x24, IPMI 2.0 §33.10).
 *
 * ipmi_sim 2.0.33's own handler checks the request length against data[5] + 6 instead of the
 * record header's length byte (data[4] + 5), so a well-formed record is rejected with 0x80 and a
 * record that happens to pass is stored truncated. This handler checks the record header and
 * stores the record through ipmi_sim's own ipmi_mc_add_main_sdr (the function behind the
 * `main_sdr_add` emulator command), which updates the repository's record count and most recent
 * addition time exactly as a firmware-side change would.
 *
 * lan.conf:  loadlib "/path/add_sdr.so" ""
 */
#include <errno.h>
#include <stdint.h>
#include <stdio.h>
#include <string.h>

#include <OpenIPMI/serv.h>
#include <OpenIPMI/mcserv.h>

#define STORAGE_NETFN 0x0A
#define CMD_GET_SDR 0x23
#define CMD_ADD_SDR 0x24

#define CC_OK 0x00
#define CC_OUT_OF_SPACE 0xC4
#define CC_INVALID_COMMAND 0xC1
#define CC_REQUEST_LENGTH_INVALID 0xC7
#define CC_UNSPECIFIED 0xFF

/* Exported by the ipmi_sim executable (bmc_storage.c / bmc.c), not declared in its headers. */
extern int ipmi_mc_add_main_sdr(lmc_data_t *mc, unsigned char *data, unsigned int data_len);
extern cmd_handler_f storage_netfn_handlers[256];

static cmd_handler_f builtin_get_sdr;

/* The record ID of the repository's last record (where an addition goes), through the built-in
 * Get SDR with record ID FFFFh ("last record"). */
static int last_record_id(lmc_data_t *mc, unsigned char id[2])
{
    unsigned char request[6] = {0x00, 0x00, 0xff, 0xff, 0x00, 0x02};
    unsigned char response[16];
    unsigned int response_len = sizeof(response);
    msg_t msg;

    memset(&msg, 0, sizeof(msg));
    msg.netfn = STORAGE_NETFN;
    msg.cmd = CMD_GET_SDR;
    msg.data = request;
    msg.len = sizeof(request);
    builtin_get_sdr(mc, &msg, response, &response_len, NULL);
    if (response_len < 5 || response[0] != CC_OK)
        return -1;
    id[0] = response[3];
    id[1] = response[4];
    return 0;
}

static void handle_add_sdr(lmc_data_t *mc, msg_t *msg, unsigned char *rdata,
                           unsigned int *rdata_len, void *cb_data)
{
    int rv;

    (void) cb_data;
    /* Record ID (2, ignored), SDR version, record type, record length, then that many bytes. */
    if (msg->len < 5 || msg->len != (unsigned int) msg->data[4] + 5) {
        rdata[0] = CC_REQUEST_LENGTH_INVALID;
        *rdata_len = 1;
        return;
    }
    rv = ipmi_mc_add_main_sdr(mc, msg->data, msg->len);
    if (rv == ENOSYS) {
        handle_invalid_cmd(mc, rdata, rdata_len);
        return;
    }
    if (rv) {
        rdata[0] = rv == ENOMEM ? CC_OUT_OF_SPACE : CC_UNSPECIFIED;
        *rdata_len = 1;
        return;
    }
    if (last_record_id(mc, rdata + 1) != 0) {
        rdata[0] = CC_UNSPECIFIED;
        *rdata_len = 1;
        return;
    }
    rdata[0] = CC_OK;
    *rdata_len = 3;
}

int ipmi_sim_module_init(sys_data_t *sys, const char *initstr)
{
    (void) sys;
    (void) initstr;
    builtin_get_sdr = storage_netfn_handlers[CMD_GET_SDR];
    if (!builtin_get_sdr)
        return EINVAL;
    return ipmi_emu_register_cmd_handler(STORAGE_NETFN, CMD_ADD_SDR, handle_add_sdr, NULL);
}

void ipmi_sim_module_print_version(sys_data_t *sys, char *initstr)
{
    (void) sys;
    (void) initstr;
    printf("wattwise add_sdr module\n");
}
