# shellcheck shell=bash
# Copyright (c) osfleet.hup contributors
# GNU General Public License v3.0+ (see COPYING or https://www.gnu.org/licenses/gpl-3.0.txt)
#
# store.sh: the on-disk store of the osfleet lab's balena-engine stand-in (sourced by
# /usr/bin/balena). It reads and writes a balena-engine data root in the real overlay2 shape
# (docs/internals.md §4, hostapp-facts §4), with no daemon:
#
#   overlay2/<cache-id>/{diff/,link,lower,work/}   layer contents; lower = "l/<short>:..." (top down)
#   overlay2/l/<short> -> ../<cache-id>/diff        the short links the lowerdir lists use
#   image/overlay2/imagedb/content/sha256/<id>     the image config (its sha256 is the image id)
#   image/overlay2/imagedb/metadata/sha256/<id>/lastUpdated
#   image/overlay2/layerdb/sha256/<chain id>/{diff,cache-id,size[,parent]}
#   image/overlay2/layerdb/mounts/<container id>/{mount-id,init-id,parent}
#   image/overlay2/repositories.json               {"Repositories": {name: {"name:tag"|"name@digest": id}}}
#   image/overlay2/distribution/{diffid-by-digest,v2metadata-by-diffid}/sha256/...
#   containers/<id>/{config.v2.json,hostconfig.json}
#   volumes/<id>/_data
#   tmp/                                           work space of pulls and loads
#
# Writes go through a temporary name and a rename, container configs last, so that a power cut
# leaves at most orphans (as with the real engine) and never a half-written record. Every name
# read from the store (cache ids, link ids, mount ids) is checked before it becomes a path.

# shellcheck disable=SC2034  # CACHE, CHAIN, CID, VTAR: results of the functions below, for the caller
OV="" IMG="" LAYERDB="" IMAGEDB="" REPOS="" CONTAINERS="" VOLUMES="" ETMP="" CACHE="" CHAIN="" CID="" VTAR=""
# made by the running command, removed if it fails (NEW_CHAINS: layers it recorded in layerdb)
NEW_LAYERS="" NEW_CHAINS="" NEW_VOLUMES="" NEW_CID=""

store_init() { # DATA_ROOT
    DR=$1
    OV=$DR/overlay2
    IMG=$DR/image/overlay2
    LAYERDB=$IMG/layerdb
    IMAGEDB=$IMG/imagedb
    REPOS=$IMG/repositories.json
    CONTAINERS=$DR/containers
    VOLUMES=$DR/volumes
    ETMP=$DR/tmp
    mkdir -p "$OV/l" "$LAYERDB/sha256" "$LAYERDB/mounts" "$LAYERDB/tmp" \
        "$IMAGEDB/content/sha256" "$IMAGEDB/metadata/sha256" \
        "$IMG/distribution/diffid-by-digest/sha256" "$IMG/distribution/v2metadata-by-diffid/sha256" \
        "$CONTAINERS" "$VOLUMES" "$ETMP" || die "cannot initialise the data root $DR"
    [ -f "$REPOS" ] || write_file "$REPOS" '{"Repositories":{}}'
}

# --- small helpers -------------------------------------------------------------------------------

# jq's -r output of one value, inside a program (a string as it is, anything else as JSON): for the
# programs that print several values at once as shell assignments (@sh), because every jq start
# costs ~25 ms of CPU on a device (jq 1.6 compiles its builtins first): most of what the engine
# spent in an update went there
JQ_RAW='def raw: if type == "string" then . else tojson end;'

randhex() { od -An -N32 -tx1 /dev/urandom | tr -d ' \n'; }
shortid() { LC_ALL=C tr -dc 'A-Z0-9' </dev/urandom | head -c 26; }
sha256_file() { local s; s=$(sha256sum "$1") || return 1; printf 'sha256:%s' "${s%% *}"; }
sha256_text() { local s; s=$(printf '%s' "$1" | sha256sum); printf 'sha256:%s' "${s%% *}"; }
is_hex64() { case $1 in *[!0-9a-f]*) return 1 ;; esac; [ ${#1} = 64 ]; }
is_digest() { case $1 in sha256:*) is_hex64 "${1#sha256:}" ;; *) return 1 ;; esac; }
is_linkid() { case $1 in '' | *[!A-Z0-9]*) return 1 ;; esac; }
now_rfc3339() { date -u +%Y-%m-%dT%H:%M:%S.000000000Z; }

# write_file PATH TEXT: atomically (tmp + rename), no trailing newline (like the engine's files)
write_file() {
    if printf '%s' "$2" >"$1.tmp.$$" && mv -f "$1.tmp.$$" "$1"; then return 0; fi
    rm -f "$1.tmp.$$"
    return 1
}

# read_id FILE CHECK: a store value that must pass CHECK (is_hex64, is_linkid, ...)
read_id() {
    local v
    v=$(cat "$1" 2>/dev/null) || die "corrupt data root: cannot read $1"
    "$2" "$v" || die "corrupt data root: unexpected value in $1"
    printf '%s' "$v"
}

# relative path inside an archive or a layer: no absolute path, no "..", no odd characters
safe_rel() {
    case $1 in
        '' | /* | ..* | */../* | */.. | *$'\n'* | *$'\t'* | *'|'*) return 1 ;;
    esac
    return 0
}

human_size() { # bytes -> docker's HumanSizeWithPrecision(n, 3): 62.1MB
    awk -v n="$1" 'BEGIN { split("B kB MB GB TB", u, " "); i = 1
        while (n >= 1000 && i < 5) { n /= 1000; i++ }
        if (i == 1) printf "%dB", n; else printf "%.3g%s", n, u[i] }'
}

is_mounted() { awk -v p="$1" '$2 == p { f = 1 } END { exit !f }' /proc/mounts; }

# --- layers --------------------------------------------------------------------------------------

chain_of() { # PARENT_CHAIN DIFF_ID -> chain id
    if [ -z "$1" ]; then printf '%s' "$2"; else sha256_text "$1 $2"; fi
}

layer_dir() { # CHAIN -> overlay2 dir of the layer (cache id checked)
    local cache
    cache=$(read_id "$LAYERDB/sha256/${1#sha256:}/cache-id" is_hex64) || return 1
    printf '%s' "$OV/$cache"
}

# chains_of_image ID -> chain ids of its layers, bottom first, one per line
chains_of_image() {
    local cfg=$IMAGEDB/content/sha256/${1#sha256:} parent="" d c
    jq -r '.rootfs.diff_ids[]' "$cfg" | while IFS= read -r d; do
        is_digest "$d" || die "image $1 has a bad diff id $d"
        c=$(chain_of "$parent" "$d")
        printf '%s\n' "$c"
        parent=$c
    done
}

# chains_of_diffs ID DIFF_ID... -> the chain ids of an image's layers (ID's diff ids, bottom first),
# one per line
chains_of_diffs() {
    local id=$1 parent="" d c
    shift
    for d in "$@"; do
        is_digest "$d" || die "image $id has a bad diff id $d"
        c=$(chain_of "$parent" "$d")
        printf '%s\n' "$c"
        parent=$c
    done
}

dir_size() { # bytes of files and symlinks below DIR, a hard linked file once (a layer's size)
    find "$1" \( -type f -o -type l \) -exec stat -c '%i %s' {} + 2>/dev/null |
        awk '!seen[$1]++ { s += $2 } END { printf "%d", s }'
}

# convert_whiteouts DIR: OCI whiteouts (.wh.NAME) -> overlay whiteouts (char device 0:0 NAME)
convert_whiteouts() {
    local f name parent
    find "$1" -name '.wh.*' | sort -r | while IFS= read -r f; do
        name=${f##*/}
        parent=${f%/*}
        if [ "$name" = .wh..wh..opq ]; then
            echo "opaque whiteout $f: not supported by the lab engine" >&2
            exit 1
        fi
        rm -rf "${parent:?}/${name#.wh.}" && rm -f "$f" && mknod "$parent/${name#.wh.}" c 0 0 || exit 1
    done
}

# layer_new: a new, empty layer directory with diff/; its cache id in CACHE (and in NEW_LAYERS,
# which the command removes again if it fails)
layer_new() {
    CACHE=$(randhex)
    mkdir -p "$OV/$CACHE/diff" || return 1
    NEW_LAYERS="$NEW_LAYERS $CACHE"
}

# layer_link CACHE PARENT_DIR: link/, l/<short>, lower and work/ of a layer over PARENT_DIR ("": base)
layer_link() {
    local cache=$1 parent=$2 short plink plower
    short=$(shortid)
    write_file "$OV/$cache/link" "$short" && ln -s "../$cache/diff" "$OV/l/$short" || return 1
    if [ -n "$parent" ]; then
        plink=$(read_id "$parent/link" is_linkid) || return 1
        plower=$(cat "$parent/lower" 2>/dev/null)
        write_file "$OV/$cache/lower" "l/$plink${plower:+:$plower}" && mkdir -p "$OV/$cache/work" || return 1
    fi
}

# layer_commit CACHE DIFF_ID PARENT_CHAIN: the layerdb record, written last; its chain id in CHAIN
layer_commit() {
    local cache=$1 diff=$2 parent=$3 set pdir=""
    CHAIN=$(chain_of "$parent" "$diff")
    if [ -n "$parent" ]; then pdir=$(layer_dir "$parent") || return 1; fi
    layer_link "$cache" "$pdir" || return 1
    set=$(mktemp -d "$LAYERDB/tmp/write-set-XXXXXX") || return 1
    printf '%s' "$diff" >"$set/diff" && printf '%s' "$cache" >"$set/cache-id" &&
        dir_size "$OV/$cache/diff" >"$set/size" || return 1
    [ -z "$parent" ] || printf '%s' "$parent" >"$set/parent" || return 1
    sync -f "$OV/$cache" 2>/dev/null
    mv -T "$set" "$LAYERDB/sha256/${CHAIN#sha256:}" || return 1
    NEW_CHAINS="$CHAIN $NEW_CHAINS" # newest first
}

# layer_from_tar TAR DIFF_ID PARENT_CHAIN: a layer from a tar already verified against DIFF_ID
# (or the layer the store already has); its chain id in CHAIN
layer_from_tar() {
    CHAIN=$(chain_of "$3" "$2")
    [ -d "$LAYERDB/sha256/${CHAIN#sha256:}" ] && return 0
    layer_new || return 1
    tar -x --numeric-owner -p -f "$1" -C "$OV/$CACHE/diff" || { echo "cannot unpack layer $2" >&2; return 1; }
    convert_whiteouts "$OV/$CACHE/diff" || return 1
    layer_commit "$CACHE" "$2" "$3"
}

# layer_remove CHAIN: delete a layer that nothing references any more
layer_remove() {
    local hex=${1#sha256:} dir link
    [ -d "$LAYERDB/sha256/$hex" ] || return 0
    dir=$(layer_dir "$1") || return 1
    link=$(cat "$dir/link" 2>/dev/null)
    rm -rf "$LAYERDB/sha256/$hex"
    is_linkid "$link" && rm -f "$OV/l/$link"
    rm -rf "$dir"
}

# verified_tar BLOB DIFF_ID WORKFILE: the uncompressed tar of a layer blob, after its sha256 was
# checked against DIFF_ID (nothing is unpacked from a layer that does not match); its path in VTAR:
# the blob itself when it is not compressed, else WORKFILE (the blob decompressed)
verified_tar() {
    local got
    VTAR=$1
    if [ "$(od -An -N2 -tx1 "$1" | tr -d ' ')" = 1f8b ]; then
        gzip -dc "$1" >"$3" || { echo "cannot decompress layer $2" >&2; rm -f "$3"; return 1; }
        VTAR=$3
    fi
    got=$(sha256_file "$VTAR")
    if [ "$got" != "$2" ]; then
        echo "filesystem layer verification failed: expected $2, got $got" >&2
        rm -f "$3"
        return 1
    fi
}

# --- images --------------------------------------------------------------------------------------

image_store() { # CONFIG_FILE -> image id
    local id hex
    id=$(sha256_file "$1") && hex=${id#sha256:} || return 1
    if [ ! -f "$IMAGEDB/content/sha256/$hex" ]; then
        cp "$1" "$IMAGEDB/content/sha256/.$hex.tmp" &&
            mv -f "$IMAGEDB/content/sha256/.$hex.tmp" "$IMAGEDB/content/sha256/$hex" || return 1
    fi
    mkdir -p "$IMAGEDB/metadata/sha256/$hex" &&
        write_file "$IMAGEDB/metadata/sha256/$hex/lastUpdated" "$(now_rfc3339)" || return 1
    printf '%s' "$id"
}

image_exists() { is_digest "$1" && [ -f "$IMAGEDB/content/sha256/${1#sha256:}" ]; }

# ref_parse REF: R_NAME, R_TAG, R_DIGEST of a reference (registry/repo[:tag][@digest])
ref_parse() {
    local r=$1 last
    R_NAME="" R_TAG="" R_DIGEST=""
    case $r in *@*) R_DIGEST=${r##*@}; r=${r%@*} ;; esac
    last=${r##*/}
    case $last in *:*) R_TAG=${last##*:}; r=${r%:*} ;; esac
    R_NAME=$r
    case $R_NAME in '' | *[!a-z0-9._/:-]* | /* | */ | *//*) return 1 ;; esac
    case $R_TAG in *[!A-Za-z0-9_.-]*) return 1 ;; esac
    [ -z "$R_DIGEST" ] || is_digest "$R_DIGEST" || return 1
    [ -n "$R_TAG" ] || [ -n "$R_DIGEST" ] || R_TAG=latest
}

repo_key() { if [ -n "$R_DIGEST" ]; then printf '%s@%s' "$R_NAME" "$R_DIGEST"; else printf '%s:%s' "$R_NAME" "$R_TAG"; fi; }

repo_add() { # NAME KEY ID
    jq --arg n "$1" --arg k "$2" --arg id "$3" '.Repositories[$n][$k] = $id' "$REPOS" >"$REPOS.tmp.$$" &&
        mv -f "$REPOS.tmp.$$" "$REPOS"
}

repo_remove_key() { # KEY...: every one in one jq (a start costs ~25 ms)
    [ $# -gt 0 ] || return 0
    jq '.Repositories |= (map_values(del(.[$ARGS.positional[]])) | with_entries(select(.value != {})))' \
        "$REPOS" --args -- "$@" >"$REPOS.tmp.$$" && mv -f "$REPOS.tmp.$$" "$REPOS"
}

repo_keys_of() { # ID -> every "name:tag" / "name@digest" key naming it
    jq -r --arg id "$1" '.Repositories[] | to_entries[] | select(.value == $id) | .key' "$REPOS"
}

# image_resolve NAME -> image id: a reference (name:tag, name@digest, name = name:latest), a full
# id (sha256:<hex> or <hex>) or a unique prefix of one
image_resolve() {
    local name=$1 id matches
    if ref_parse "$name" 2>/dev/null; then
        id=$(jq -r --arg n "$R_NAME" --arg k "$(repo_key)" '.Repositories[$n][$k] // empty' "$REPOS")
        if [ -n "$id" ] && image_exists "$id"; then printf '%s' "$id"; return 0; fi
    fi
    name=${name#sha256:}
    case $name in '' | *[!0-9a-f]*) return 1 ;; esac
    matches=$(image_ids | sed 's/^sha256://' | grep "^$name")
    [ -n "$matches" ] && [ "$(printf '%s\n' "$matches" | wc -l)" = 1 ] || return 1
    printf 'sha256:%s' "$matches"
}

image_ids() { # every image id of the store, one per line
    local f
    for f in "$IMAGEDB"/content/sha256/*; do
        is_hex64 "${f##*/}" && printf 'sha256:%s\n' "${f##*/}"
    done
    return 0
}

# image_in_use ID -> container ids whose image it is
image_in_use() {
    local c
    for c in "$CONTAINERS"/*/config.v2.json; do
        [ -f "$c" ] || continue
        jq -r --arg id "$1" 'select(.Image == $id) | .ID' "$c"
    done
}

chain_with_ancestors() { # CHAIN -> it and its parents (layerdb parent files), one per line
    local c=$1 n=0
    while [ -n "$c" ] && [ "$n" -lt 512 ]; do
        printf '%s\n' "$c"
        c=$(cat "$LAYERDB/sha256/${c#sha256:}/parent" 2>/dev/null)
        n=$((n + 1))
    done
}

# image_delete ID [KEYS]: the record, every reference to it (KEYS: repo_keys_of ID, when the caller
# has them already), and each of its layers that no other image and no container (its rw layer
# sits on the image's chain) still uses
image_delete() {
    local id=$1 key keys other chains keep chain parent
    chains=$(chains_of_image "$id" | awk '{ a[NR] = $0 } END { for (i = NR; i > 0; i--) print a[i] }')
    keep=$(
        for other in $(image_ids); do [ "$other" = "$id" ] || chains_of_image "$other"; done
        for parent in "$LAYERDB"/mounts/*/parent; do
            [ -f "$parent" ] && chain_with_ancestors "$(cat "$parent")"
        done
        echo
    )
    if [ $# -ge 2 ]; then keys=$2; else keys=$(repo_keys_of "$id"); fi
    # shellcheck disable=SC2086  # one word per key (ref_parse's characters)
    if [ -n "$keys" ] && repo_remove_key $keys; then
        for key in $keys; do echo "Untagged: $key"; done
    fi
    rm -f "$IMAGEDB/content/sha256/${id#sha256:}"
    rm -rf "$IMAGEDB/metadata/sha256/${id#sha256:}"
    echo "Deleted: $id"
    for chain in $chains; do
        printf '%s\n' "$keep" | grep -qxF "$chain" && continue
        layer_remove "$chain" && echo "Deleted: $chain"
    done
}

# --- containers ----------------------------------------------------------------------------------

container_ids() { # every container id of the store, one per line
    local d
    for d in "$CONTAINERS"/*; do
        is_hex64 "${d##*/}" && [ -d "$d" ] && printf '%s\n' "${d##*/}"
    done
    return 0
}

container_resolve() { # NAME -> container id (full id, unique prefix, or name)
    local name=${1#/} c matches
    case $name in '' | *[!A-Za-z0-9_.-]*) return 1 ;; esac
    if is_hex64 "$name" && [ -f "$CONTAINERS/$name/config.v2.json" ]; then printf '%s' "$name"; return 0; fi
    for c in $(container_ids); do
        if [ "$(jq -r .Name "$CONTAINERS/$c/config.v2.json")" = "/$name" ]; then printf '%s' "$c"; return 0; fi
    done
    case $name in *[!0-9a-f]*) return 1 ;; esac
    matches=$(container_ids | grep "^$name")
    [ -n "$matches" ] && [ "$(printf '%s\n' "$matches" | wc -l)" = 1 ] || return 1
    printf '%s' "$matches"
}

# copy_up PATH VOLUME_DIR LAYER_DIR...: what the image holds at PATH (layers bottom first, their
# whiteouts honoured) into a new volume, as the engine does when it creates a volume
copy_up() {
    local p=${1#/} vol=$2 layer d w
    shift 2
    for layer in "$@"; do
        d=$layer/diff/$p
        if [ -c "$d" ] && [ ! -L "$d" ]; then # the directory itself was deleted in this layer
            find "$vol" -mindepth 1 -maxdepth 1 -exec rm -rf {} +
            continue
        fi
        if [ ! -d "$d" ] || [ -L "$d" ] || [ "$(realpath -m "$d")" != "$d" ]; then continue; fi
        (cd "$d" && find . -mindepth 1 -type c) | while IFS= read -r w; do rm -rf "${vol:?}/$w"; done
        cp -a "$d/." "$vol/" || return 1
        find "$vol" -type c -exec rm -f {} +
    done
}

# init_layer DIR: what the engine's init layer holds (mobynit skips it, the container sees it)
init_layer() {
    mkdir -p "$1/dev/pts" "$1/dev/shm" "$1/proc" "$1/sys" "$1/etc" &&
        : >"$1/.dockerenv" && : >"$1/etc/hostname" && : >"$1/etc/hosts" && : >"$1/etc/resolv.conf" &&
        : >"$1/dev/console" && ln -s /proc/mounts "$1/etc/mtab"
}

# container_create IMAGE_ID NAME RUNTIME VOLUMES(newline separated) BINDS(json) ENV(json) CMD(json)
# -> its id in CID: init + rw layers, layerdb mount record, anonymous volumes, then the config
# (CREATE_REF: the image reference as the user gave it, recorded as Config.Image)
container_create() {
    local id=$1 name=$2 runtime=$3 vols=$4 binds=$5 envs=$6 cmd=$7
    local cfg cid mid top topdir layers="" chain dest vid ref_image vars diffs=() image_vols="" points=()
    cfg=$IMAGEDB/content/sha256/${id#sha256:}
    ref_image=${CREATE_REF:-$id}
    cid=$(randhex) mid=$(randhex)
    NEW_LAYERS="$NEW_LAYERS $mid $mid-init"
    NEW_CID=$cid
    # the image's layers and its own volumes in one jq (a start costs ~25 ms)
    # shellcheck disable=SC2016  # jq's own syntax
    vars=$(jq -r "$JQ_RAW"' @sh "diffs=(\([.rootfs.diff_ids[]? | raw]))
        image_vols=\([.config.Volumes // {} | keys[] | raw] | join("\n"))"' "$cfg") && eval "$vars"
    for chain in $(chains_of_diffs "$id" ${diffs[@]+"${diffs[@]}"}); do
        top=$chain
        layers="$layers $(layer_dir "$chain")" || return 1
    done
    [ -n "${top:-}" ] || { echo "image $id has no layers" >&2; return 1; }
    topdir=$(layer_dir "$top") || return 1
    mkdir -p "$OV/$mid-init/diff" "$OV/$mid/diff" || return 1
    init_layer "$OV/$mid-init/diff" || return 1
    layer_link "$mid-init" "$topdir" && layer_link "$mid" "$OV/$mid-init" || return 1
    # volumes: the image's own plus --volume=/path (anonymous), filled from the image
    vols=$(printf '%s\n%s\n' "$image_vols" "$vols" | grep -v '^$' | sort -u)
    for dest in $vols; do
        case $dest in /* ) ;; *) echo "invalid volume $dest: not an absolute path" >&2; return 1 ;; esac
        safe_rel "${dest#/}" || { echo "invalid volume $dest" >&2; return 1; }
        vid=$(randhex)
        NEW_VOLUMES="$NEW_VOLUMES $vid"
        mkdir -p "$VOLUMES/$vid/_data" || return 1
        # shellcheck disable=SC2086  # the layer dirs are one word each
        copy_up "$dest" "$VOLUMES/$vid/_data" $layers || return 1
        points+=("$dest" "$vid") # its mount point: in the record's jq below
    done
    mkdir -p "$LAYERDB/mounts/$cid" &&
        write_file "$LAYERDB/mounts/$cid/mount-id" "$mid" &&
        write_file "$LAYERDB/mounts/$cid/init-id" "$mid-init" &&
        write_file "$LAYERDB/mounts/$cid/parent" "$top" || return 1
    [ -n "$name" ] || name=osfleet_${cid:0:12}
    mkdir -p "$CONTAINERS/$cid/checkpoints" || return 1
    jq -n --arg runtime "${runtime:-runc}" --argjson binds "$binds" \
        '{Binds: $binds, ContainerIDFile: "", LogConfig: {Type: "journald", Config: {}},
          NetworkMode: "default", PortBindings: {}, RestartPolicy: {Name: "no", MaximumRetryCount: 0},
          AutoRemove: false, VolumeDriver: "", VolumesFrom: null, Privileged: false,
          Runtime: $runtime}' >"$CONTAINERS/$cid/hostconfig.json" || return 1
    jq -c --arg cid "$cid" --arg mid "$mid" --arg name "/$name" --arg img "$id" \
        --arg ref "$ref_image" --arg now "$(now_rfc3339)" --argjson env "$envs" \
        --argjson cmd "$cmd" \
        '(reduce range(0; $ARGS.positional | length; 2) as $i ({}; .[$ARGS.positional[$i]] = {
              Source: "", Destination: $ARGS.positional[$i], RW: true, Name: $ARGS.positional[$i + 1],
              Driver: "local", Type: "volume", Relabel: "", Spec: {}, SkipMountpointCreation: false})) as $points
        | {StreamConfig: {},
          State: {Running: false, Paused: false, Restarting: false, OOMKilled: false,
                  RemovalInProgress: false, Dead: false, Pid: 0, ExitCode: 0, Error: "",
                  StartedAt: "0001-01-01T00:00:00Z", FinishedAt: "0001-01-01T00:00:00Z",
                  Health: null},
          ID: $cid, Created: $now, Managed: false,
          Path: ((if ($cmd | length) > 0 then $cmd else (.config.Cmd // []) end)[0] // ""),
          Args: ((if ($cmd | length) > 0 then $cmd else (.config.Cmd // []) end)[1:]),
          Config: ((.config // {}) + {Hostname: $cid[0:12], Domainname: "", User: "",
                   AttachStdin: false, AttachStdout: false, AttachStderr: false, Tty: false,
                   OpenStdin: false, StdinOnce: false,
                   Env: ((.config.Env // []) + $env),
                   Cmd: (if ($cmd | length) > 0 then $cmd else (.config.Cmd // null) end),
                   Image: $ref,
                   Volumes: ((.config.Volumes // {}) + ($points | map_values({})))}),
          Image: $img, NetworkSettings: {}, LogPath: "", Name: $name, Driver: "overlay2",
          OS: "linux", MountLabel: "", ProcessLabel: "", RestartCount: 0,
          HasBeenStartedBefore: false, HasBeenManuallyStopped: false, MountPoints: $points,
          SecretReferences: null, ConfigReferences: null, AppArmorProfile: "", HostnamePath: "",
          HostsPath: "", ShmPath: "", ResolvConfPath: "", SeccompProfile: "",
          NoNewPrivileges: false}' "$cfg" --args -- ${points[@]+"${points[@]}"} >"$CONTAINERS/$cid/config.v2.json.tmp" || return 1
    sync -f "$DR" 2>/dev/null
    mv -f "$CONTAINERS/$cid/config.v2.json.tmp" "$CONTAINERS/$cid/config.v2.json" || return 1
    sync -f "$DR" 2>/dev/null
    # shellcheck disable=SC2034  # results for the caller
    CID=$cid NEW_CID="" NEW_VOLUMES=""
    NEW_LAYERS=${NEW_LAYERS% "$mid" "$mid-init"}
}

container_set_state() { # CID JQ_EXPRESSION: update the State of a container record atomically
    local f=$CONTAINERS/$1/config.v2.json
    jq -c "$2" "$f" >"$f.tmp" && mv -f "$f.tmp" "$f"
}

container_remove() { # CID VOLUMES(0|1)
    local cid=$1 f=$CONTAINERS/$1/config.v2.json out vols mid vol dir link
    # in one jq: its volumes (first line), and the record marked RemovalInProgress (second line,
    # what container_set_state writes: tojson is jq -c's text)
    out=$(jq -r '([(.MountPoints // {})[] | select(.Type == "volume") | .Name] | join(" ")),
        (.State.RemovalInProgress = true | tojson)' "$f") || return 1
    vols=${out%%$'\n'*}
    printf '%s\n' "${out#*$'\n'}" >"$f.tmp" && mv -f "$f.tmp" "$f" || return 1
    mid=$(read_id "$LAYERDB/mounts/$cid/mount-id" is_hex64) || return 1
    if [ "$2" = 1 ]; then
        for vol in $vols; do
            is_hex64 "$vol" && rm -rf "${VOLUMES:?}/$vol"
        done
    fi
    for dir in "$OV/$mid" "$OV/$mid-init"; do
        link=$(cat "$dir/link" 2>/dev/null)
        is_linkid "$link" && rm -f "$OV/l/$link"
        rm -rf "$dir"
    done
    rm -rf "${LAYERDB:?}/mounts/$cid" "${CONTAINERS:?}/$cid"
}

# container_lowerdirs CID -> the lowerdir list of its image (init layer first), absolute paths
container_lowerdirs() {
    local mid dir lower first=1 l out=""
    mid=$(read_id "$LAYERDB/mounts/$1/mount-id" is_hex64) || return 1
    dir=$OV/$mid
    lower=$(cat "$dir/lower") || return 1
    local IFS=:
    for l in $lower; do
        case $l in l/*) is_linkid "${l#l/}" || return 1 ;; *) return 1 ;; esac
        if [ "$first" = 1 ]; then out=$OV/$l; first=0; else out=$out:$OV/$l; fi
    done
    printf '%s' "$out"
}
