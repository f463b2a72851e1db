-- A device's public addresses are personal data: device_addresses.seen (where its sessions
-- come from) and .reported (the JSON list it reported) are sealed like the columns of 0011. The
-- rows written before this migration are marked 'plain:' here, and the server seals them at its
-- next start, before it serves (store.reseal_all over the ddns room's ADDRESSES_SEALED).
UPDATE device_addresses SET seen = 'plain:' || seen WHERE seen != '';
UPDATE device_addresses SET reported = 'plain:' || reported;
