/*
 * DCMI for OpenIPMI's ipmi_sim (which has none): a loadable module that answers
 *   - Get DCMI Capabilities Info (NetFn 0x2C, cmd 0x01, group extension 0xDC), parameter 1;
 *   - Get Power Reading          (NetFn 0x2C, cmd 0x02, group extension 0xDC), DCMI 1.5 §6.6.1,
 * with the current watts read, on every request, from the file named in the loadlib argument,
 * so a test changes the node's power while the BMC runs.
 *
 * lan.conf:  loadlib "/path/dcmi_power.so" "/path/to/watts-file"
 *
 * Privilege is not enforced here: the emulator does not hand modules the session privilege.
 */
#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <stdint.h>
#include <time.h>

#include <OpenIPMI/serv.h>
#include <OpenIPMI/mcserv.h>

#define DCMI_GROUP_EXTENSION 0xDC
#define DCMI_CMD_GET_CAPABILITIES 0x01
#define DCMI_CMD_GET_POWER_READING 0x02

#define CC_OK 0x00
#define CC_INVALID_COMMAND 0xC1
#define CC_REQUEST_LENGTH_INVALID 0xC7
#define CC_PARAMETER_OUT_OF_RANGE 0xC9
#define CC_CANNOT_PROVIDE_RESPONSE 0xCE

static char watts_path[4096];
static unsigned int min_watts = 0xffff, max_watts, reads;
static unsigned long long sum_watts;

static int read_watts(unsigned int *watts)
{
    FILE *f = fopen(watts_path, "r");
    double value;
    int ok;

    if (!f)
        return -1;
    ok = fscanf(f, "%lf", &value) == 1 && value >= 0 && value <= 65535;
    fclose(f);
    if (!ok)
        return -1;
    *watts = (unsigned int) (value + 0.5);
    return 0;
}

static void put16(unsigned char *p, unsigned int v)
{
    p[0] = v & 0xff;
    p[1] = (v >> 8) & 0xff;
}

static void put32(unsigned char *p, uint32_t v)
{
    put16(p, v & 0xffff);
    put16(p + 2, v >> 16);
}

static void reply(unsigned char *rdata, unsigned int *rdata_len, unsigned char cc)
{
    rdata[0] = cc;
    rdata[1] = DCMI_GROUP_EXTENSION;
    *rdata_len = 2;
}

static void get_power_reading(msg_t *msg, unsigned char *rdata, unsigned int *rdata_len)
{
    unsigned int watts;

    /* group extension, mode, mode attributes, reserved */
    if (msg->len < 4) {
        reply(rdata, rdata_len, CC_REQUEST_LENGTH_INVALID);
        return;
    }
    if (msg->data[1] != 0x01) { /* only "system power statistics" */
        reply(rdata, rdata_len, CC_PARAMETER_OUT_OF_RANGE);
        return;
    }
    if (read_watts(&watts) != 0) {
        reply(rdata, rdata_len, CC_CANNOT_PROVIDE_RESPONSE);
        return;
    }
    if (watts < min_watts)
        min_watts = watts;
    if (watts > max_watts)
        max_watts = watts;
    sum_watts += watts;
    reads++;

    reply(rdata, rdata_len, CC_OK);
    put16(rdata + 2, watts);                          /* current */
    put16(rdata + 4, min_watts);                      /* minimum over the period */
    put16(rdata + 6, max_watts);                      /* maximum */
    put16(rdata + 8, (unsigned int) (sum_watts / reads)); /* average */
    put32(rdata + 10, (uint32_t) time(NULL));         /* timestamp */
    put32(rdata + 14, 1000);                          /* statistics period, ms */
    rdata[18] = 0x40;                                 /* power measurement active */
    *rdata_len = 19;
}

static void get_capabilities(msg_t *msg, unsigned char *rdata, unsigned int *rdata_len)
{
    if (msg->len < 2) {
        reply(rdata, rdata_len, CC_REQUEST_LENGTH_INVALID);
        return;
    }
    if (msg->data[1] != 0x01) { /* only "supported DCMI capabilities" */
        reply(rdata, rdata_len, CC_PARAMETER_OUT_OF_RANGE);
        return;
    }
    reply(rdata, rdata_len, CC_OK);
    rdata[2] = 0x01; /* DCMI 1.5 */
    rdata[3] = 0x05;
    rdata[4] = 0x02; /* parameter revision */
    rdata[5] = 0x00; /* reserved */
    rdata[6] = 0x01; /* platform capabilities: power management */
    rdata[7] = 0x01; /* manageability access: out-of-band primary LAN */
    *rdata_len = 8;
}

static void handle_dcmi(lmc_data_t *mc, msg_t *msg, unsigned char *rdata,
                        unsigned int *rdata_len, void *cb_data)
{
    (void) mc;
    (void) cb_data;
    switch (msg->cmd) {
    case DCMI_CMD_GET_CAPABILITIES:
        get_capabilities(msg, rdata, rdata_len);
        break;
    case DCMI_CMD_GET_POWER_READING:
        get_power_reading(msg, rdata, rdata_len);
        break;
    default:
        reply(rdata, rdata_len, CC_INVALID_COMMAND);
    }
}

int ipmi_sim_module_init(sys_data_t *sys, const char *initstr)
{
    (void) sys;
    if (!initstr || !*initstr || strlen(initstr) >= sizeof(watts_path)) {
        fprintf(stderr, "dcmi_power: loadlib needs the watts file path as its argument\n");
        return EINVAL;
    }
    strcpy(watts_path, initstr);
    ipmi_emu_register_group_extension_handler(DCMI_GROUP_EXTENSION, handle_dcmi, NULL);
    return 0;
}

void ipmi_sim_module_print_version(sys_data_t *sys, char *initstr)
{
    (void) sys;
    (void) initstr;
    printf("wattwise dcmi_power module\n");
}
