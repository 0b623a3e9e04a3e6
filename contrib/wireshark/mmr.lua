-- mmr.lua: Wireshark/TShark dissector for the traffic control option of draft-park-mis-01
-- (Multiple Interface Selection), the IPv6 hop-by-hop option mmr reads to choose an uplink.
--
-- Usage
--   wireshark -X lua_script:contrib/wireshark/mmr.lua capture.pcap
--   tshark -X lua_script:contrib/wireshark/mmr.lua -r capture.pcap -Y 'mmr.service == "video"'
-- or install it for every run: copy it to ~/.local/lib/wireshark/plugins/ (Wireshark 3.6+;
-- older releases: ~/.wireshark/plugins/) and restart Wireshark.
--
-- Filter fields
--   mmr                   the option is present
--   mmr.service           service type name: "data", "control", "voip", "video", or "reserved"
--   mmr.service_type      service type, u8 (0 data, 1 control, 2 voip, 3 video, 4-255 reserved)
--   mmr.preference        preference, u16 (0 none, 1 max-throughput, 2 qos-load-balancing,
--                         3 load-balancing; other values are policies of the policy file)
--   mmr.option_type       the option type matched
-- e.g.  mmr.service == "video" && mmr.preference == 2
--
-- Preference: Edit > Preferences > Protocols > MMR > "Option type" (tshark:
-- -o mmr.option_type:33), for operators that configured another option_type than the default
-- 0x3E (62) in mmr's policy file.
--
-- What it reads, as mmr does (engine/ref/parse.py): the first IPv6 header of the frame, a
-- hop-by-hop header right after it (the only place the option is read), and in it the first
-- option of the configured type whose length is 3.  An option of that type with another
-- length (which mmr drops) is flagged as malformed and not decoded.
--
-- Names and numbers are those of mmr (engine/constants.py SERVICE_NAMES, engine/config.py
-- BUILTIN_POLICIES); tests/test_dissector.py checks this file against mmr's parser.
-- Running as root: Debian's Wireshark runs Lua scripts for root (init.lua:
-- run_user_scripts_when_superuser = true); if your build refuses, run as a normal user.

local DEFAULT_OPTION_TYPE = 0x3E
local OPTION_DATA_LEN = 3

local SERVICE_NAMES = { [0] = "data", [1] = "control", [2] = "voip", [3] = "video" }
local PREFERENCE_NAMES = {
    [0] = "none",
    [1] = "max-throughput",
    [2] = "qos-load-balancing",
    [3] = "load-balancing",
}

local mmr = Proto("mmr", "MMR traffic control option (draft-park-mis-01)")

local pf_option_type = ProtoField.uint8("mmr.option_type", "Option type", base.HEX)
local pf_service = ProtoField.string("mmr.service", "Service")
local pf_service_type = ProtoField.uint8("mmr.service_type", "Service type", base.DEC, SERVICE_NAMES)
local pf_preference = ProtoField.uint16("mmr.preference", "Preference", base.DEC, PREFERENCE_NAMES)
mmr.fields = { pf_option_type, pf_service, pf_service_type, pf_preference }

local ef_bad_len = ProtoExpert.new("mmr.bad_length", "Traffic control option length is not 3 (mmr drops it)",
                                   expert.group.MALFORMED, expert.severity.WARN)
mmr.experts = { ef_bad_len }

mmr.prefs.option_type = Pref.uint("Option type", DEFAULT_OPTION_TYPE,
                                  "Hop-by-hop option type of the traffic control option " ..
                                  "(001xxxxx; mmr's default 0x3E = 62)")

local f_ipv6 = Field.new("ipv6")

-- The traffic control option in the hop-by-hop header following the IPv6 header at `off`
-- of `buf`: returns (option offset, option length) or nil.
local function find_option(buf, off, want)
    local avail = buf:len()
    if avail - off < 40 or bit.rshift(buf(off, 1):uint(), 4) ~= 6 then
        return nil
    end
    local plen = buf(off + 4, 2):uint()
    local stop = avail
    if plen ~= 0 and off + 40 + plen < stop then
        stop = off + 40 + plen
    end
    if buf(off + 6, 1):uint() ~= 0 then          -- no hop-by-hop header first
        return nil
    end
    local pos = off + 40
    if stop - pos < 2 then
        return nil
    end
    local hend = pos + (buf(pos + 1, 1):uint() + 1) * 8
    if hend > stop then
        return nil
    end
    local i = pos + 2
    while i < hend do
        local t = buf(i, 1):uint()
        if t == 0 then                           -- Pad1
            i = i + 1
        else
            if hend - i < 2 then
                return nil
            end
            local olen = buf(i + 1, 1):uint()
            if olen > hend - i - 2 then
                return nil
            end
            if t == want then
                return i, olen
            end
            i = i + 2 + olen
        end
    end
    return nil
end

function mmr.dissector(tvb, pinfo, tree)
    local ips = { f_ipv6() }
    if #ips == 0 then
        return
    end
    local ip = ips[1]                            -- the outermost IPv6 header, as mmr reads it
    local buf = ip.source or tvb
    local want = mmr.prefs.option_type
    local at, olen = find_option(buf, ip.offset, want)
    if at == nil then
        return
    end
    local t = tree:add(mmr, buf(at, 2 + olen))
    t:add(pf_option_type, buf(at, 1))
    if olen ~= OPTION_DATA_LEN then
        t:add_proto_expert_info(ef_bad_len)
        return
    end
    local service = buf(at + 2, 1):uint()
    local preference = buf(at + 3, 2):uint()
    local name = SERVICE_NAMES[service] or "reserved"
    t:add(pf_service, buf(at + 2, 1), name)
    t:add(pf_service_type, buf(at + 2, 1))
    t:add(pf_preference, buf(at + 3, 2))
    t:append_text(string.format(", service: %s (%d), preference: %s (%d)", name, service,
                                PREFERENCE_NAMES[preference] or "policy file", preference))
end

register_postdissector(mmr, true)
