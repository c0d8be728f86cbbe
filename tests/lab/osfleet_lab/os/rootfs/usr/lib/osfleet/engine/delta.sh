# shellcheck shell=bash
# Copyright (c) osfleet.hup contributors
# GNU General Public License v3.0+ (see COPYING or https://www.gnu.org/licenses/gpl-3.0.txt)
#
# delta.sh: `balena pull` of a delta image (sourced by /usr/bin/balena after store.sh).
#
# A delta image carries the balena-engine delta labels: io.resin.delta.base (the image id of the
# base, which the engine finds in its delta data root: the active partition's engine) and
# io.resin.delta.config (the target image's config, whose sha256 is the target's image id). The
# lab's delta format (docs/internals.md §3) differs from balena's rsync deltas: the delta's layer
# holds the changed files (a file-level root delta, the same layer the export writer applies), and
# io.osfleet.delta.layers says, per target layer, either "reuse" (the base holds the same layer
# at the same place of the chain) or the layer's full listing. A listed layer is rebuilt from the
# delta's files and the base's layers, and must then list exactly as the label says.

# listing_of DIR: the canonical listing of a layer directory, sorted (LC_ALL=C), one line each:
#   <path> TAB <kind: d|f|h|l|w> TAB <mode in octal, - for w> TAB <sha256 (f) | the first path of
#   the same file (h: a hard link) | target (l) | ->
# (byte for byte what hostapp.layer_listing() writes for a layer tree)
listing_of() {
    (
        cd "$1" || exit 1
        {
            find . -mindepth 1 -exec stat -c 'S|%F|%a|%t:%T|%i|%n' {} + &&
                find . -mindepth 1 -type f -exec sha256sum {} + | sed 's/^\([0-9a-f]*\)  /H|\1|/' &&
                find . -mindepth 1 -type l | while IFS= read -r l; do
                    printf 'L|%s|%s\n' "$l" "$(readlink "$l")"
                done
        } | awk -F'|' '
            function rest(from,   i, s) { s = $from; for (i = from + 1; i <= NF; i++) s = s "|" $i; return s }
            $1 == "S" { p = rest(6); sub(/^\.\//, "", p); k = $2; m = $3
                if (k == "directory") k = "d"
                else if (k ~ /^regular/) k = "f"
                else if (k == "symbolic link") k = "l"
                else if (k == "character special file" && $4 == "0:0") { k = "w"; m = "-" }
                else k = "?"
                kind[p] = k; mode[p] = m; inode[p] = $5; next }
            $1 == "H" { p = rest(3); sub(/^\.\//, "", p); hash[p] = $2; next }
            $1 == "L" { p = $2; sub(/^\.\//, "", p); target[p] = rest(3); next }
            END { for (p in kind) {
                d = "-"
                if (kind[p] == "f") d = hash[p]; else if (kind[p] == "l") d = target[p]
                printf "%s\t%s\t%s\t%s\t%s\n", p, kind[p], mode[p], d, inode[p] } }' |
            LC_ALL=C sort | awk -F'\t' -v OFS='\t' '
                $2 == "f" && ($5 in first) { print $1, "h", $3, first[$5]; next }
                $2 == "f" { first[$5] = $1 }
                { print $1, $2, $3, $4 }'
    )
}

# layer_rebuild LISTING DEST SRC BASE_LAYER_DIR...: the layer of LISTING in DEST. Files come from
# SRC (the delta's unpacked layer) when it holds them, else from the topmost base layer (dirs
# given top first) that has the path; directories, links and modes come from the listing. Then
# DEST must list exactly as LISTING.
layer_rebuild() {
    local listing=$1 dest=$2 src=$3 work n b m
    shift 3
    work=$(mktemp -d "$ETMP/rebuild-XXXXXX") || return 1
    awk -F'\t' 'NF != 4 || $1 ~ /(^|\/)\.\.(\/|$)/ || $1 ~ /^\// { bad = 1 } END { exit bad }' \
        "$listing" || { echo "delta: bad entries in the layer listing" >&2; return 1; }
    # what each source holds: <source no>|<kind>|<path> (0 = the delta, 1.. = base layers)
    {
        (cd "$src" && find . -mindepth 1 ! -name '.wh.*' -exec stat -c '0|%F|%n' {} +)
        n=1
        for b in "$@"; do
            (cd "$b/diff" && find . -mindepth 1 -exec stat -c "$n|%F|%n" {} +)
            n=$((n + 1))
        done
    } >"$work/index" || return 1
    # the source of every file of the listing: the delta when it has the file, else the topmost
    # base layer holding the path (which must then be a file)
    awk -F'|' '
        FNR == NR { p = $3; for (i = 4; i <= NF; i++) p = p "|" $i; sub(/^\.\//, "", p); n = $1 + 0
            if (n == 0) { if ($2 ~ /^regular/) { src[p] = 0; kind[p] = $2 }; next }
            if (!(p in src) || (src[p] != 0 && n < src[p])) { src[p] = n; kind[p] = $2 }
            next }
        $2 == "f" { if (!($1 in src) || kind[$1] !~ /^regular/) { print "missing\t" $1; exit 1 }
            print src[$1] "\t" $1 }' "$work/index" FS='\t' "$listing" >"$work/plan" || {
        echo "delta: no source for $(awk -F'\t' '$1 == "missing" { print $2 }' "$work/plan")" >&2
        rm -rf "$work"
        return 1
    }
    awk -F'\t' '$2 == "d" { print $1 }' "$listing" | (cd "$dest" && tr '\n' '\0' | xargs -0 -r mkdir -p --) ||
        return 1
    n=0
    for b in "$src" "$@"; do
        [ "$n" = 0 ] || b=$b/diff
        awk -F'\t' -v n="$n" '$1 == n { print $2 }' "$work/plan" >"$work/files.$n"
        if [ -s "$work/files.$n" ]; then
            tar -C "$b" -cf - --no-recursion --verbatim-files-from -T "$work/files.$n" |
                tar -C "$dest" -xpf - --numeric-owner || return 1
        fi
        n=$((n + 1))
    done
    awk -F'\t' '$2 == "l" { print $1 "\t" $4 }' "$listing" | while IFS=$'\t' read -r path target; do
        ln -s "$target" "$dest/$path" || exit 1
    done || return 1
    awk -F'\t' '$2 == "h" { print $1 "\t" $4 }' "$listing" | while IFS=$'\t' read -r path first; do
        case $first in /* | ..* | */../*) exit 1 ;; esac
        ln -f "$dest/$first" "$dest/$path" || exit 1
    done || return 1
    awk -F'\t' '$2 == "w" { print $1 }' "$listing" | while IFS= read -r path; do
        mknod "$dest/$path" c 0 0 || exit 1
    done || return 1
    awk -F'\t' '$2 == "f" || $2 == "d" { print $3 }' "$listing" | sort -u >"$work/modes"
    while IFS= read -r m; do
        case $m in '' | *[!0-7]*) return 1 ;; esac
        awk -F'\t' -v m="$m" '($2 == "f" || $2 == "d") && $3 == m { print $1 }' "$listing" |
            (cd "$dest" && tr '\n' '\0' | xargs -0 -r chmod "$m" --) || return 1
    done <"$work/modes"
    listing_of "$dest" >"$work/got" || return 1
    if ! cmp -s "$work/got" "$listing"; then
        echo "delta: the rebuilt layer does not match its listing, first difference:" >&2
        diff "$listing" "$work/got" 2>/dev/null | sed -n '2,3p' >&2
        rm -rf "$work"
        return 1
    fi
    rm -rf "$work"
}

# delta_pull IMGDIR CONFIG REF: the target image of a delta pulled (by skopeo) into IMGDIR; its
# image id in DELTA_ID
delta_pull() {
    local dir=$1 dcfg=$2 ref=$3 base="" tid bcfg n i diff sdiff parent="" chain cache vars
    local bchains="" bdirs="" bdirs_up="" c d blob bhex
    local spec_ok=0 target_ok=0 target_json="" nspec=0 tdiffs=() sdiffs=() sreuse=() slistings=() ddiffs=()
    [ -n "$DDR" ] || die "delta image $ref: this engine has no delta data root"
    # everything the rebuild reads from the (verified) delta config, its labels parsed, in one jq (a
    # start costs ~25 ms): each value as `jq -r` would print it (the target config as `jq -j`)
    # shellcheck disable=SC2016  # jq's own syntax
    vars=$(jq -r "$JQ_RAW"'
        def dlabel($k): try (.config.Labels[$k] // "") catch "";
        def parsed: if . == "" then null else (try fromjson catch null) end;
        (dlabel("io.resin.delta.base") | raw) as $base
        | (dlabel("io.osfleet.delta.layers") | raw | parsed) as $spec
        | (dlabel("io.resin.delta.config") | raw) as $target
        | (try ($target | parsed | .rootfs.diff_ids) catch null) as $td
        | (if ($spec | type) == "array" then $spec else [] end) as $sp
        | (if ($td | type) == "array" then $td else [] end) as $tda
        | @sh "base=\($base) target_json=\($target) ddiffs=(\([.rootfs.diff_ids[]? | raw]))",
          @sh "spec_ok=\(if ($spec | type) == "array" then 1 else 0 end) nspec=\($sp | length)",
          @sh "target_ok=\(if ($td | type) == "array" then 1 else 0 end) tdiffs=(\([$tda[] | raw]))",
          @sh "sdiffs=(\([$sp[] | (try .diff_id catch "") | raw])) sreuse=(\([$sp[] | (try (.reuse // false) catch false) | raw]))",
          @sh "slistings=(\([$sp[] | (try .listing catch null) | raw]))"' "$dcfg" 2>/dev/null) && eval "$vars"
    is_digest "$base" || die "delta image $ref: bad io.resin.delta.base label '$base'"
    if [ "$spec_ok" != 1 ]; then
        die "delta image $ref: no io.osfleet.delta.layers label (the lab engine rebuilds osfleet lab deltas; balena's rsync deltas are not implemented)"
    fi
    printf '%s' "$target_json" >"$dir/target.json" || die "cannot write $dir/target.json"
    [ "$target_ok" = 1 ] || die "delta image $ref: bad io.resin.delta.config label"
    tid=$(sha256_file "$dir/target.json")
    bhex=${base#sha256:}
    bcfg=$DDR/image/overlay2/imagedb/content/sha256/$bhex
    [ -f "$bcfg" ] || die "delta image $ref: its base image $base is not in the delta data root $DDR"
    [ "$(sha256_file "$bcfg")" = "$base" ] || die "delta image $ref: the base image $base in $DDR is corrupt"
    # the base's layers in the delta data root, bottom first
    parent=""
    for d in $(jq -r '.rootfs.diff_ids[]' "$bcfg"); do
        c=$(chain_of "$parent" "$d")
        cache=$(read_id "$DDR/image/overlay2/layerdb/sha256/${c#sha256:}/cache-id" is_hex64) ||
            die "delta image $ref: layer $c of the base image is missing in $DDR"
        bchains="$bchains $c"
        bdirs="$DDR/overlay2/$cache $bdirs" # top first
        bdirs_up="$bdirs_up $DDR/overlay2/$cache"
        parent=$c
    done
    # the delta's own layers (the manifest's, pull_image's M_LAYERS), verified, unpacked as files
    # (its whiteouts are not applied)
    mkdir -p "$dir/src"
    i=0
    for blob in ${M_LAYERS[@]+"${M_LAYERS[@]}"}; do
        diff=${ddiffs[$i]-null}
        verified_tar "$dir/${blob#sha256:}" "$diff" "$dir/layer.tar" || die "delta image $ref: layer $i is corrupt"
        tar -x --numeric-owner -p -f "$VTAR" -C "$dir/src" || die "delta image $ref: cannot unpack layer $i"
        rm -f "$dir/layer.tar"
        i=$((i + 1))
    done
    n=${#tdiffs[@]}
    [ "$nspec" = "$n" ] || die "delta image $ref: io.osfleet.delta.layers does not describe the $n target layers"
    parent=""
    i=0
    while [ "$i" -lt "$n" ]; do
        diff=${tdiffs[$i]}
        sdiff=${sdiffs[$i]}
        if ! is_digest "$diff" || [ "$sdiff" != "$diff" ]; then
            die "delta image $ref: layer $i: the listing is for $sdiff, not $diff"
        fi
        chain=$(chain_of "$parent" "$diff")
        if [ ! -d "$LAYERDB/sha256/${chain#sha256:}" ]; then
            layer_new || die "cannot create a layer in $DR"
            # shellcheck disable=SC2153  # CACHE: set by layer_new (store.sh)
            cache=$CACHE
            if [ "${sreuse[$i]}" = true ]; then
                # shellcheck disable=SC2086  # one word per chain id
                c=$(printf '%s\n' $bchains | sed -n "$((i + 1))p")
                [ "$c" = "$chain" ] || die "delta image $ref: layer $i ($diff) is not at that place in the base image"
                # shellcheck disable=SC2086  # one word per layer dir
                d=$(printf '%s\n' $bdirs_up | sed -n "$((i + 1))p")
                cp -a "$d/diff/." "$OV/$cache/diff/" || die "cannot copy layer $i from the base image"
            else
                printf '%s' "${slistings[$i]}" >"$dir/listing.$i"
                # shellcheck disable=SC2086  # one word per base layer dir
                layer_rebuild "$dir/listing.$i" "$OV/$cache/diff" "$dir/src" $bdirs ||
                    die "delta image $ref: cannot rebuild layer $i ($diff) from the delta and the base $base"
            fi
            layer_commit "$cache" "$diff" "$parent" || die "cannot record layer $i in $DR"
            # shellcheck disable=SC2153  # CHAIN: set by layer_commit (store.sh)
            chain=$CHAIN
        fi
        parent=$chain
        i=$((i + 1))
    done
    [ "$(image_store "$dir/target.json")" = "$tid" ] || die "cannot store the image $tid"
    # shellcheck disable=SC2034  # the result, for the balena CLI
    DELTA_ID=$tid
}
