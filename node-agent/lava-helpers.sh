#!/bin/sh
# The lava-* commands in POSIX shell, for a node that has nothing of ours: the
# dispatcher types this file into the node's console with the test shell and links each
# command's name to it. It needs a POSIX shell and awk; `lava-*-attach` also needs
# base64. It behaves as the node agent's marker transport does (the same markers,
# outputs, cache files and exit codes: 0 done, 1 the call failed, 2 wrong usage,
# 3 no way to reach the dispatcher); tests/tests/marker_pty.rs runs both against the
# same cases, so a change to one that the other lacks fails there.
#
# MultiNode calls are lines on stdout that the dispatcher reads on the console
# (`<LAVA_MULTI_NODE> <LAVA_SEND id key=value>`); its reply is a line typed into the
# console, read here from stdin with the shell's `read`, which takes no byte beyond
# the line. Values are percent-encoded as proto::markers does it.

LAVA_CMD=${0##*/}

# Every command, as links to this file (`sh lava-helpers.sh --install DIR` makes them);
# the node agent's own list is the same (checked by the tests).
LAVA_COMMANDS="lava-self lava-role lava-group lava-send lava-wait lava-wait-all lava-sync
lava-network lava-start-vms lava-wait-for-vms lava-test-case lava-test-set lava-test-raise
lava-test-reference lava-test-run-attach lava-test-case-attach lava-echo-ipv4
lava-target-ip lava-install-packages lava-background-process-start
lava-background-process-stop"

lava_fail() { # CODE MESSAGE: the agent's "<command>: <message>" on stderr, then exit
    printf '%s: %s\n' "$LAVA_CMD" "$2" >&2
    exit "$1"
}

lava_usage() {
    lava_fail 2 "usage: $1"
}

# A word LAVA accepts as a name, result, measurement or units: not empty, no white
# space, no '<' or '>' (proto::signal::is_word).
lava_word() {
    case $1 in
        '' | *[[:space:]\<\>]*)
            lava_fail 2 "\"$1\" may not be empty or contain spaces, '<' or '>'" ;;
    esac
}

# One of LAVA's four results, else the command's usage.
lava_check_result() { # RESULT USAGE
    case $1 in
        pass | fail | skip | unknown) ;;
        *) lava_usage "$2" ;;
    esac
}

lava_check_id() {
    case $1 in
        '' | *=* | *[[:space:]]*)
            lava_fail 2 "invalid message id \"$1\": it may not be empty or contain '=' or spaces" ;;
    esac
}

# printf, not echo: dash's echo reads backslashes in a name or message as escapes.
lava_signal() {
    printf '<LAVA_SIGNAL_%s>\n' "$1"
}

# A MultiNode call recorded as the test case multinode-<api>-<id>, as LAVA does.
lava_recorded() { # API ID STATUS
    if [ "$3" = 0 ]; then
        lava_signal "TESTCASE TEST_CASE_ID=multinode-$1-$2 RESULT=pass"
    else
        lava_signal "TESTCASE TEST_CASE_ID=multinode-$1-$2 RESULT=fail"
    fi
}

# Prints the call marker: API, message id, then SEND's key=value pairs or WAIT_ALL's
# role, each percent-encoded. awk reads its arguments in BEGIN and exits, so none is
# taken for a file or an assignment.
lava_call_line() {
    LC_ALL=C awk '
    function enc(s,    out, i, c) {
        out = ""
        for (i = 1; i <= length(s); i++) {
            c = substr(s, i, 1)
            if (index("%<>=:", c) || ord[c] <= 32 || ord[c] == 127)
                out = out sprintf("%%%02X", ord[c])
            else
                out = out c
        }
        return out
    }
    BEGIN {
        for (i = 1; i < 256; i++) ord[sprintf("%c", i)] = i
        line = "<LAVA_MULTI_NODE> <LAVA_" ARGV[1] " " enc(ARGV[2])
        for (i = 3; i < ARGC; i++) {
            if (ARGV[1] == "SEND") {
                eq = index(ARGV[i], "=")
                line = line " " enc(substr(ARGV[i], 1, eq - 1)) "=" enc(substr(ARGV[i], eq + 1))
            } else {
                line = line " " enc(ARGV[i])
            }
        }
        print line ">"
        exit
    }' "$@"
}

# Reads lines from the console until the reply to API; prints it.
lava_reply() { # API
    while IFS= read -r lava_line; do
        case $lava_line in
            *"<LAVA_$1_COMPLETE"*)
                printf '%s\n' "$lava_line"
                return 0 ;;
        esac
    done
    lava_fail 3 "the console closed before the reply"
}

# Decodes a reply line (on stdin) for API: "nack" and the reason on a first line, or
# the entries as cache lines node:key=value (a value's line breaks made spaces).
lava_decode() { # API
    LC_ALL=C awk -v api="$1" '
    function dec(s,    out, i, c) {
        out = ""
        for (i = 1; i <= length(s); i++) {
            c = substr(s, i, 1)
            if (c == "%" && i + 2 <= length(s)) {
                out = out sprintf("%c", hexval[toupper(substr(s, i + 1, 1))] * 16 + hexval[toupper(substr(s, i + 2, 1))])
                i += 2
            } else
                out = out c
        }
        return out
    }
    {
        for (i = 0; i < 16; i++) hexval[substr("0123456789ABCDEF", i + 1, 1)] = i
        head = "<LAVA_" api "_COMPLETE"
        body = substr($0, index($0, head) + length(head))
        body = substr(body, 1, index(body, ">") - 1)
        n = split(body, words, /[ \t\r]+/)
        first = 1
        for (w = 1; w <= n; w++) {
            if (words[w] == "") continue
            if (first && words[w] == "nack") {
                reason = ""
                for (v = w + 1; v <= n; v++)
                    if (substr(words[v], 1, 7) == "reason=") reason = dec(substr(words[v], 8))
                print "nack"
                print reason
                exit
            }
            first = 0
            colon = index(words[w], ":")
            pair = substr(words[w], colon + 1)
            eq = index(pair, "=")
            value = dec(substr(pair, eq + 1))
            gsub(/\n/, " ", value)
            print dec(substr(words[w], 1, colon - 1)) ":" dec(substr(pair, 1, eq - 1)) "=" value
        }
        exit
    }'
}

# Makes a call that gets a reply; writes its entries to CACHE (when given, atomically)
# and returns 0, or prints the nack's reason and returns 1.
lava_call() { # API CACHE ID [ARGS...]
    lava_api=$1
    lava_cache=$2
    shift 2
    lava_call_line "$lava_api" "$@"
    lava_answer=$(lava_reply "$lava_api") || exit 3
    lava_decoded=$(printf '%s\n' "$lava_answer" | lava_decode "$lava_api")
    case $lava_decoded in
        nack | nack"
"*)
            lava_reason=${lava_decoded#nack}
            lava_reason=${lava_reason#"
"}
            [ -n "$lava_reason" ] || lava_reason="the dispatcher answered nack to LAVA_$lava_api"
            printf '%s: %s\n' "$LAVA_CMD" "$lava_reason" >&2
            return 1 ;;
    esac
    if [ -n "$lava_cache" ]; then
        if [ -n "$lava_decoded" ]; then
            printf '%s\n' "$lava_decoded" >"$lava_cache.$$" || lava_fail 3 "cannot write $lava_cache"
        else
            : >"$lava_cache.$$" || lava_fail 3 "cannot write $lava_cache"
        fi
        mv -f "$lava_cache.$$" "$lava_cache" || lava_fail 3 "cannot write $lava_cache"
    fi
    return 0
}

lava_cache_file() {
    echo "${LAVA_MULTI_NODE_CACHE:-/tmp/lava_multi_node_cache.txt}"
}

lava_network_cache_file() {
    echo "${LAVA_MULTI_NODE_NETWORK_CACHE:-/tmp/lava_multi_node_network_cache.txt}"
}

# The group as LAVA_GROUP lists it: node<TAB>role lines.
lava_group_lines() {
    [ -n "$LAVA_GROUP" ] || lava_fail 3 "LAVA_GROUP is not set: the group is unknown"
    printf '%s\n' "$LAVA_GROUP" | tr -d '\r'
}

# One address of IFACE from `ip` (or `ifconfig`): "ipv4 netmask broadcast" or nothing.
lava_ipv4_of() { # IFACE
    if command -v ip >/dev/null 2>&1; then
        ip -4 -o addr show dev "$1" 2>/dev/null | LC_ALL=C awk '
        function mask(bits,    m, i, o, out) {
            out = ""
            for (i = 0; i < 4; i++) {
                o = bits >= 8 ? 255 : (bits <= 0 ? 0 : 256 - 2 ^ (8 - bits))
                out = out (i ? "." : "") o
                bits -= 8
            }
            return out
        }
        {
            for (i = 1; i <= NF; i++) {
                if ($i == "inet") { split($(i + 1), a, "/"); ip = a[1]; m = mask(a[2] == "" ? 32 : a[2]) }
                if ($i == "brd") b = $(i + 1)
            }
            if (ip != "") { print ip, m, b; exit }
        }'
    else
        ifconfig "$1" 2>/dev/null | LC_ALL=C awk '
        /inet / {
            for (i = 1; i <= NF; i++) {
                v = $i; sub(/^(addr|Bcast|Mask):/, "", v)
                if ($i == "inet" ) { ip = $(i + 1); sub(/^addr:/, "", ip) }
                if ($i ~ /^addr:/) ip = v
                if ($i ~ /^Bcast:/ || $i == "broadcast") b = ($i == "broadcast" ? $(i + 1) : v)
                if ($i ~ /^Mask:/ || $i == "netmask") m = ($i == "netmask" ? $(i + 1) : v)
            }
            print ip, m, b; exit
        }'
    fi
}

lava_iface_exists() {
    [ -e "/sys/class/net/$1" ] || ip link show dev "$1" >/dev/null 2>&1 || ifconfig "$1" >/dev/null 2>&1
}

# What `lava-network broadcast IFACE` sends: LAVA's keys, empty ones left out.
lava_network_pairs() { # IFACE
    # shellcheck disable=SC2046 # "ipv4 netmask broadcast" split into three on purpose
    set -- "$1" $(lava_ipv4_of "$1")
    lava_host=$(hostname 2>/dev/null || cat /proc/sys/kernel/hostname 2>/dev/null)
    [ -z "$lava_host" ] || printf 'hostname=%s\nhostname-full=%s\n' "$lava_host" "$lava_host"
    [ -z "$2" ] || echo "ipv4=$2"
    [ -z "$3" ] || echo "netmask=$3"
    [ -z "$4" ] || echo "broadcast=$4"
    lava_ipv6=$(ip -6 -o addr show dev "$1" 2>/dev/null | LC_ALL=C awk '{ for (i = 1; i <= NF; i++) if ($i == "inet6") { split($(i + 1), a, "/"); print a[1]; exit } }')
    [ -z "$lava_ipv6" ] || echo "ipv6=$lava_ipv6"
    lava_mac=$(cat "/sys/class/net/$1/address" 2>/dev/null)
    [ -z "$lava_mac" ] || echo "mac=$lava_mac"
    # The default route's gateway: /proc/net/route has it in little-endian hex.
    lava_gw=$(LC_ALL=C awk '
        function h(s) { return index("0123456789ABCDEF", toupper(substr(s, 1, 1))) * 16 + index("0123456789ABCDEF", toupper(substr(s, 2, 1))) - 17 }
        NR > 1 && $2 == "00000000" { g = $3; print h(substr(g, 7, 2)) "." h(substr(g, 5, 2)) "." h(substr(g, 3, 2)) "." h(substr(g, 1, 2)); exit }' /proc/net/route 2>/dev/null)
    [ -z "$lava_gw" ] || echo "default-gateway=$lava_gw"
    LC_ALL=C awk '$1 == "nameserver" && $2 != "" && n < 3 { n++; print "dns_" n "=" $2 }' /etc/resolv.conf 2>/dev/null
}

# A value of NODE (a node id, or the host name it broadcast) in the network cache.
lava_lookup() { # NODE KEY
    LC_ALL=C awk -v node="$1" -v key="$2" '
    {
        colon = index($0, ":"); n = substr($0, 1, colon - 1); pair = substr($0, colon + 1)
        eq = index(pair, "="); k = substr(pair, 1, eq - 1); v = substr(pair, eq + 1)
        if (colon && eq) { value[n, k] = v; nodes[n] = 1; if (k == "hostname") byhost[v] = n }
    }
    END {
        target = (node in nodes) ? node : byhost[node]
        if (target != "" && (target, key) in value) { print value[target, key]; exit 0 }
        exit 1
    }' "$(lava_network_cache_file)"
}

lava_need_network_cache() {
    [ -r "$(lava_network_cache_file)" ] ||
        lava_fail 2 "cannot read $(lava_network_cache_file): no such file (run the collecting command first)"
}

# `lava-network hosts FILE` and `alias-hosts FILE`: ipv4<TAB>hostname lines, with a
# role alias (client01, ...) for alias-hosts.
lava_hosts() { # FILE ALIASES
    lava_need_network_cache
    lava_roles=
    [ "$2" = 1 ] && lava_roles=$(lava_group_lines)
    LAVA_ROLES=$lava_roles LC_ALL=C awk '
    BEGIN {
        n = split(ENVIRON["LAVA_ROLES"], lines, "\n")
        for (i = 1; i <= n; i++) { split(lines[i], f, "\t"); if (f[1] != "") role[f[1]] = f[2] }
    }
    {
        colon = index($0, ":"); node = substr($0, 1, colon - 1); pair = substr($0, colon + 1)
        eq = index(pair, "="); k = substr(pair, 1, eq - 1); v = substr(pair, eq + 1)
        if (!colon || !eq) next
        if (!(node in seen)) { seen[node] = 1; order[++count] = node }
        value[node, k] = v
    }
    END {
        for (i = 1; i <= count; i++) {
            node = order[i]
            if (!((node, "ipv4") in value) || !((node, "hostname") in value)) continue
            line = value[node, "ipv4"] "\t" value[node, "hostname"]
            if (node in role) { r = role[node]; index_of[r]++; line = line "\t" r sprintf("%02d", index_of[r]) }
            print line
        }
    }' "$(lava_network_cache_file)" >>"$1" || lava_fail 2 "cannot open $1"
}

# Sends FILE to the dispatcher over the console: a header, base64 lines, an end.
lava_attach() { # CASE-OR-EMPTY FILE MIMETYPE-OR-EMPTY
    [ -f "$2" ] || lava_fail 1 "file $2 not found"
    [ -r "$2" ] || lava_fail 1 "cannot read $2"
    command -v base64 >/dev/null 2>&1 || lava_fail 3 "attaching needs base64, which this system does not have"
    lava_size=$(wc -c <"$2" | tr -d ' ')
    lava_max=${LAVA_ATTACH_MAX_BYTES:-1048576}
    [ "$lava_size" -le "$lava_max" ] ||
        lava_fail 1 "$2 is $lava_size bytes, more than the $lava_max an attachment may have"
    lava_name=$(printf '%s' "${2##*/}" | tr -c 'A-Za-z0-9._+-' '_')
    case $lava_name in .*) lava_name=_${lava_name#.} ;; esac
    lava_head="ATTACH NAME=$lava_name SIZE=$lava_size"
    [ -z "$1" ] || lava_head="$lava_head CASE=$1"
    [ -z "$3" ] || lava_head="$lava_head MIMETYPE=$3"
    lava_signal "$lava_head"
    base64 <"$2" | tr -d '\r'
    lava_signal "ATTACHEND NAME=$lava_name"
}

# `--attach FILE MIME-TYPE` ..., as lava-background-process-stop takes them.
lava_check_attach_flags() {
    while [ $# -gt 0 ]; do
        { [ "$1" = --attach ] && [ $# -ge 3 ]; } ||
            lava_usage "lava-background-process-stop <name> [--attach <file> <mime-type>] ..."
        lava_word "$3"
        shift 3
    done
}

# The package manager this system has, as install.deps picks it.
lava_package_manager() {
    for lava_pm in apt-get dnf yum zypper apk opkg; do
        command -v "$lava_pm" >/dev/null 2>&1 && { echo "$lava_pm"; return 0; }
    done
    return 1
}

lava_test_case() {
    lava_usage_text='lava-test-case <name> --result pass|fail|skip|unknown [--measurement M] [--units U] | lava-test-case <name> --shell <command ...>'
    [ $# -ge 1 ] || lava_usage "$lava_usage_text"
    lava_name=$1
    shift
    lava_word "$lava_name"
    if [ "$1" = --shell ]; then
        shift
        [ $# -ge 1 ] || lava_usage "$lava_usage_text"
        lava_signal "STARTTC $lava_name"
        if sh -c "$*"; then lava_result=pass; else lava_result=fail; fi
        lava_signal "ENDTC $lava_name"
        lava_signal "TESTCASE TEST_CASE_ID=$lava_name RESULT=$lava_result"
        return 0
    fi
    lava_result='' lava_measurement='' lava_units=''
    lava_has_measurement='' lava_has_units=''
    [ $# -ge 1 ] || lava_usage "$lava_usage_text"
    while [ $# -gt 0 ]; do
        [ $# -ge 2 ] || lava_usage "$lava_usage_text"
        case $1 in
            --result) lava_result=$2 ;;
            --measurement) lava_measurement=$2 lava_has_measurement=1 ;;
            --units) lava_units=$2 lava_has_units=1 ;;
            *) lava_usage "$lava_usage_text" ;;
        esac
        shift 2
    done
    lava_check_result "$lava_result" "$lava_usage_text"
    lava_line="TESTCASE TEST_CASE_ID=$lava_name RESULT=$lava_result"
    if [ -n "$lava_has_measurement" ]; then
        lava_word "$lava_measurement"
        lava_line="$lava_line MEASUREMENT=$lava_measurement"
    fi
    if [ -n "$lava_has_units" ]; then
        lava_word "$lava_units"
        lava_line="$lava_line UNITS=$lava_units"
    fi
    lava_signal "$lava_line"
}

lava_network() {
    lava_usage_text='lava-network broadcast <iface> | collect <iface> [role] | query <node> <key> | hosts <file> | alias-hosts <file>'
    case $1:$# in
        broadcast:2)
            lava_iface=$2
            lava_iface_exists "$lava_iface" || lava_fail 2 "no network interface \"$lava_iface\""
            lava_pairs=$(lava_network_pairs "$lava_iface")
            # One argument per line of pairs: values have no line breaks.
            lava_old_ifs=$IFS
            IFS='
'
            # shellcheck disable=SC2086 # split on line breaks only, on purpose
            set -- $lava_pairs
            IFS=$lava_old_ifs
            lava_call_line SEND network_info "$@"
            lava_recorded network-broadcast "$lava_iface" 0 ;;
        collect:2 | collect:3)
            lava_call WAIT_ALL "$(lava_network_cache_file)" network_info ${3:+"$3"}
            lava_status=$?
            lava_recorded network-collect network_info "$lava_status"
            exit "$lava_status" ;;
        query:3)
            lava_need_network_cache
            lava_lookup "$2" "$3" || lava_fail 1 "no $3 for $2 in the network cache" ;;
        hosts:2) lava_hosts "$2" 0 ;;
        alias-hosts:2) lava_hosts "$2" 1 ;;
        *) lava_usage "$lava_usage_text" ;;
    esac
}

case $LAVA_CMD in
    lava-self)
        [ -n "$LAVA_NODE_ID" ] || lava_fail 3 "LAVA_NODE_ID is not set"
        echo "$LAVA_NODE_ID" ;;
    lava-role)
        case $#:$1 in
            0:)
                if [ -n "$LAVA_NODE_ROLE" ]; then
                    echo "$LAVA_NODE_ROLE"
                else
                    lava_role=$(lava_group_lines | LC_ALL=C awk -F '\t' -v me="$LAVA_NODE_ID" '$1 == me { print $2; exit }')
                    [ -n "$lava_role" ] || lava_fail 3 "this node is not in its group"
                    echo "$lava_role"
                fi ;;
            1:list) lava_group_lines | LC_ALL=C awk -F '\t' 'NF >= 2 && !seen[$2]++ { print $2 }' ;;
            *) lava_usage "lava-role [list]" ;;
        esac ;;
    lava-group)
        lava_lines=$(lava_group_lines) || exit $?
        case $# in
            0) printf '%s\n' "$lava_lines" | LC_ALL=C awk -F '\t' 'NF >= 2' ;;
            1)
                lava_members=$(printf '%s\n' "$lava_lines" | LC_ALL=C awk -F '\t' -v role="$1" '$2 == role { print $1 }')
                [ -n "$lava_members" ] || lava_fail 1 "no role \"$1\" in this group"
                printf '%s\n' "$lava_members" ;;
            *) lava_usage "lava-group [role]" ;;
        esac ;;
    lava-send)
        [ $# -ge 1 ] || lava_usage "lava-send <message-id> [key=value ...]"
        lava_check_id "$1"
        lava_id=$1
        shift
        for lava_pair in "$@"; do
            case $lava_pair in
                *=*) ;;
                *) lava_usage "lava-send $lava_id key=value ...: \"$lava_pair\" has no '='" ;;
            esac
        done
        lava_call_line SEND "$lava_id" "$@"
        lava_recorded send "$lava_id" 0 ;;
    lava-wait)
        [ $# -eq 1 ] || lava_usage "lava-wait <message-id>"
        lava_check_id "$1"
        lava_call WAIT "$(lava_cache_file)" "$1"
        lava_status=$?
        lava_recorded wait "$1" "$lava_status"
        exit "$lava_status" ;;
    lava-wait-all)
        [ $# -eq 1 ] || [ $# -eq 2 ] || lava_usage "lava-wait-all <message-id> [role]"
        lava_check_id "$1"
        lava_call WAIT_ALL "$(lava_cache_file)" "$@"
        lava_status=$?
        lava_recorded wait-all "$1" "$lava_status"
        exit "$lava_status" ;;
    lava-sync)
        [ $# -eq 1 ] || lava_usage "lava-sync <message-id>"
        lava_check_id "$1"
        lava_call SYNC "" "$1"
        lava_status=$?
        lava_recorded sync "$1" "$lava_status"
        exit "$lava_status" ;;
    lava-start-vms)
        [ $# -eq 0 ] || lava_usage "lava-start-vms"
        [ -n "$_LAVA_VM_GROUP_HOST_IP" ] ||
            lava_fail 3 "_LAVA_VM_GROUP_HOST_IP is not set: is this the VM group's host?"
        lava_call_line SEND lava_vm_start "host_ip=$_LAVA_VM_GROUP_HOST_IP"
        lava_recorded start-vms lava_vm_start 0 ;;
    lava-wait-for-vms)
        [ $# -eq 0 ] || lava_usage "lava-wait-for-vms"
        lava_call_line SEND lava_vm_stop
        lava_call WAIT_ALL "" lava_vm_stop
        lava_status=$?
        lava_recorded wait-for-vms lava_vm_stop "$lava_status"
        exit "$lava_status" ;;
    lava-network) lava_network "$@" ;;
    lava-test-case) lava_test_case "$@" ;;
    lava-test-set)
        case $#:$1 in
            2:start) lava_word "$2"; lava_signal "TESTSET START $2" ;;
            1:stop | 2:stop) lava_signal "TESTSET STOP" ;;
            *) lava_usage "lava-test-set start <name> | lava-test-set stop" ;;
        esac ;;
    lava-test-raise)
        [ $# -ge 1 ] || lava_usage "lava-test-raise <message>"
        lava_signal "TESTRAISE $(printf '%s' "$*" | tr '>' ')' | tr '[:cntrl:]' ' ')"
        lava_fail 1 "test raised: $*" ;;
    lava-test-reference)
        lava_usage_text='lava-test-reference <name> --result pass|fail|skip|unknown --reference URL'
        [ $# -ge 1 ] || lava_usage "$lava_usage_text"
        lava_name=$1
        shift
        lava_word "$lava_name"
        lava_result='' lava_reference=''
        while [ $# -gt 0 ]; do
            [ $# -ge 2 ] || lava_usage "$lava_usage_text"
            case $1 in
                --result) lava_result=$2 ;;
                --reference) lava_reference=$2 ;;
                *) lava_usage "$lava_usage_text" ;;
            esac
            shift 2
        done
        lava_check_result "$lava_result" "$lava_usage_text"
        [ -n "$lava_reference" ] || lava_usage "$lava_usage_text"
        lava_word "$lava_reference"
        lava_signal "TESTREFERENCE $lava_name $lava_result $lava_reference" ;;
    lava-test-run-attach)
        [ $# -eq 1 ] || [ $# -eq 2 ] || lava_usage "lava-test-run-attach <file> [mime-type]"
        [ $# -eq 1 ] || lava_word "$2"
        lava_attach "" "$1" "$2" ;;
    lava-test-case-attach)
        [ $# -eq 2 ] || [ $# -eq 3 ] || lava_usage "lava-test-case-attach <name> <file> [mime-type]"
        lava_word "$1"
        [ $# -eq 2 ] || lava_word "$3"
        lava_attach "$1" "$2" "$3" ;;
    lava-echo-ipv4)
        [ $# -eq 1 ] || lava_usage "lava-echo-ipv4 <iface>"
        lava_iface_exists "$1" || lava_fail 2 "no network interface \"$1\""
        # shellcheck disable=SC2046 # the address is the first word
        set -- $(lava_ipv4_of "$1")
        [ -n "$1" ] || lava_fail 1 "no IPv4 address"
        echo "$1" ;;
    lava-target-ip)
        [ $# -eq 0 ] || lava_usage "lava-target-ip"
        # The address of the interface the default route leaves by, else the first
        # interface with an address.
        lava_dev=$(LC_ALL=C awk 'NR > 1 && $2 == "00000000" { print $1; exit }' /proc/net/route 2>/dev/null)
        for lava_if in $lava_dev $(ls /sys/class/net 2>/dev/null); do
            [ "$lava_if" = lo ] && continue
            # shellcheck disable=SC2046 # the address is the first word
            set -- $(lava_ipv4_of "$lava_if")
            [ -z "$1" ] || { echo "$1"; exit 0; }
        done
        lava_fail 1 "no IPv4 address" ;;
    lava-install-packages)
        [ $# -ge 1 ] || lava_usage "lava-install-packages <package ...>"
        lava_pm=$(lava_package_manager) || lava_fail 1 "no package manager found (apt-get, dnf, yum, zypper, apk, opkg)"
        case $lava_pm in
            apt-get) DEBIAN_FRONTEND=noninteractive apt-get install -y -q "$@" ;;
            dnf | yum) "$lava_pm" install -y "$@" ;;
            zypper) zypper --non-interactive install "$@" ;;
            apk) apk add "$@" ;;
            opkg) opkg install "$@" ;;
        esac || lava_fail 1 "$lava_pm could not install $*" ;;
    lava-background-process-start)
        { [ $# -ge 3 ] && [ "$2" = --cmd ]; } || lava_usage "lava-background-process-start <name> --cmd <command ...>"
        lava_word "$1"
        lava_dir=${LAVA_BACKGROUND_DIR:-/tmp/lava-background}/$1
        mkdir -p "$lava_dir" || lava_fail 3 "cannot make $lava_dir"
        [ ! -s "$lava_dir/pid" ] || ! kill -0 "$(cat "$lava_dir/pid")" 2>/dev/null ||
            lava_fail 1 "a background process named $1 is already running"
        lava_name=$1
        shift 2
        # Its own session when setsid exists, so stopping it stops what it started.
        if command -v setsid >/dev/null 2>&1; then
            setsid sh -c "$*" </dev/null >"$lava_dir/output" 2>&1 &
        else
            sh -c "$*" </dev/null >"$lava_dir/output" 2>&1 &
        fi
        echo $! >"$lava_dir/pid" ;;
    lava-background-process-stop)
        [ $# -ge 1 ] || lava_usage "lava-background-process-stop <name> [--attach <file> <mime-type>] ..."
        lava_word "$1"
        lava_dir=${LAVA_BACKGROUND_DIR:-/tmp/lava-background}/$1
        [ -s "$lava_dir/pid" ] || lava_fail 1 "no background process named $1"
        lava_pid=$(cat "$lava_dir/pid")
        shift
        # Every --attach checked before anything is stopped, as the agent does.
        lava_check_attach_flags "$@"
        # A setsid child leads its own process group: signal the group, then itself.
        kill -TERM "-$lava_pid" 2>/dev/null || kill -TERM "$lava_pid" 2>/dev/null
        rm -f "$lava_dir/pid"
        while [ $# -gt 0 ]; do
            lava_attach "" "$2" "$3"
            shift 3
        done ;;
    *)
        if [ "$1" = --install ] && [ $# -eq 2 ]; then
            # Links named after the commands, to this file's absolute path.
            lava_self=$(cd "$(dirname "$0")" && pwd)/$LAVA_CMD
            chmod 755 "$lava_self" && mkdir -p "$2" || exit 3
            for lava_command in $LAVA_COMMANDS; do
                ln -sf "$lava_self" "$2/$lava_command" || exit 3
            done
            exit 0
        fi
        lava_fail 2 "unknown command \"$LAVA_CMD\"; commands: $(echo "$LAVA_COMMANDS" | tr '\n' ' ' | sed 's/ /, /g')" ;;
esac
