#!/usr/bin/env bash
# build-kernel.sh — obtain the lab kernel (bzImage) for lab/run; prints its path on stdout.
#
# The kernel is configured from allnoconfig plus lab/kvm-lab.config and cached by
# (Debian source package version, fragment sha256), so only the first run builds:
#   1. a cached build of the preferred source package for this fragment  -> done (no network)
#   2. a prebuilt cache next to the checkout (../shared/lab) whose .info names the same
#      package and fragment hash, whose SHA256SUMS verifies and whose .config carries the
#      fragment -> copied into the cache
#   3. otherwise: install the build dependencies (Debian), fetch the kernel source from
#      Debian's archive (linux-source-7.3 from trixie-backports through a private apt state
#      derived from this machine's own Debian source entry; LOUD fallback to linux-source-6.12
#      from the machine's own sources, bookworm(-security)), build, verify the fragment
#      against the final .config.
#
# Environment:
#   MEMSLOTD_LAB_CACHE     cache root (default /var/cache/memslotd-lab when writable,
#                          else ${XDG_CACHE_HOME:-~/.cache}/memslotd-lab)
#   MEMSLOTD_LAB_PREBUILT  prebuilt cache directory (default <checkout>/../shared/lab; "" = off)
#   MEMSLOTD_LAB_PACKAGE   preferred source package (default linux-source-7.3)
#   MEMSLOTD_LAB_FALLBACK  fallback source package (default linux-source-6.12)
#   MEMSLOTD_LAB_REFRESH=1 ask the archive for the current version even when a build is cached
#   MEMSLOTD_LAB_JOBS      make -j (default: nproc)
set -euo pipefail
shopt -s inherit_errexit

LAB_DIR=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
REPO_DIR=$(dirname "$LAB_DIR")
FRAGMENT="$LAB_DIR/kvm-lab.config"
FRAG_HASH=$(sha256sum "$FRAGMENT" | cut -c1-12)

if [[ -n "${MEMSLOTD_LAB_CACHE:-}" ]]; then
    CACHE=$MEMSLOTD_LAB_CACHE
elif mkdir -p /var/cache/memslotd-lab 2>/dev/null && [[ -w /var/cache/memslotd-lab ]]; then
    CACHE=/var/cache/memslotd-lab
else
    CACHE=${XDG_CACHE_HOME:-$HOME/.cache}/memslotd-lab
fi
PREBUILT=${MEMSLOTD_LAB_PREBUILT-$REPO_DIR/../shared/lab}
PACKAGE=${MEMSLOTD_LAB_PACKAGE:-linux-source-7.3}
FALLBACK=${MEMSLOTD_LAB_FALLBACK:-linux-source-6.12}
JOBS=${MEMSLOTD_LAB_JOBS:-$(nproc)}
mkdir -p "$CACHE"

say() { printf 'lab: %s\n' "$*" >&2; }
die() { printf '\nlab: ERROR: %s\n\n' "$*" >&2; exit 1; }
loud() {
    printf '\n%s\n' "!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!" >&2
    printf '!!! lab: %s\n' "$@" >&2
    printf '%s\n\n' "!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!" >&2
}
info_get() { sed -n "s/^$2=//p" "$1" | head -n1; }

# The fragments for a source package: kvm-lab.config, then lab/kvm-lab.<package>.config when
# that source needs adapting (only the fallback does). KEY names the cache entry: with no
# adaptation it is the fragment's own sha256 prefix.
FRAGMENTS=("$FRAGMENT")
KEY=$FRAG_HASH
fragments_for() {  # $1 = package -> FRAGMENTS, KEY
    FRAGMENTS=("$FRAGMENT")
    [[ ! -f $LAB_DIR/kvm-lab.$1.config ]] || FRAGMENTS+=("$LAB_DIR/kvm-lab.$1.config")
    KEY=$(cat "${FRAGMENTS[@]}" | sha256sum | cut -c1-12)
}

# Every line of the fragments must be in the final .config; a "# CONFIG_X is not set" line is
# also satisfied when X is not offered at all (its dependencies are off). The only exemption:
# an adaptation's "# absent: CONFIG_X" — and then X must really be undefined in that source.
verify_fragment() {  # $1 = .config, $2 = kernel source tree (optional: checks "absent:" claims)
    local config=$1 src=${2:-} line sym bad=0 absent
    absent=" $(sed -n 's/^# absent: \(CONFIG_[A-Za-z0-9_]*\).*/\1/p' "${FRAGMENTS[@]}" | tr '\n' ' ') "
    for sym in $absent; do
        if [[ -n $src ]] && grep -rqE --include='Kconfig*' "^(menu)?config ${sym#CONFIG_}[[:space:]]*$" "$src"; then
            say "$sym is declared absent, but this kernel defines it: fix the adaptation"; bad=1
        else
            say "note: $sym is not in this kernel (declared absent by its adaptation)"
        fi
    done
    while IFS= read -r line; do
        if [[ $line =~ ^(# )?(CONFIG_[A-Za-z0-9_]+)[=\ ] && $absent == *" ${BASH_REMATCH[2]} "* ]]; then
            continue
        elif [[ $line =~ ^CONFIG_[A-Za-z0-9_]+= ]]; then
            grep -qxF -- "$line" "$config" || { say "fragment line not in $config: $line"; bad=1; }
        elif [[ $line =~ ^#\ (CONFIG_[A-Za-z0-9_]+)\ is\ not\ set$ ]]; then
            sym=${BASH_REMATCH[1]}
            if grep -q "^$sym=" "$config"; then
                say "fragment says '$line' but $config has: $(grep "^$sym=" "$config")"; bad=1
            fi
        fi
    done < <(cat "${FRAGMENTS[@]}")
    return $bad
}

# A finished cache entry: <cache>/<version>-<hash>/{bzImage,config,info}
cached_entry() {  # $1 = package
    local d
    fragments_for "$1"
    for d in $(ls -1d "$CACHE"/*-"$KEY" 2>/dev/null | sort -rV); do
        [[ -s $d/bzImage && -s $d/info ]] || continue
        [[ $(info_get "$d/info" package) == "$1" ]] || continue
        echo "$d"; return 0
    done
    return 1
}

publish() {  # $1 = dir with bzImage/config/info, $2 = version: moved to <version>-<key>
    local version=$2 dest="$CACHE/$2-$KEY"
    verify_fragment "$1/config" >/dev/null 2>&1 || { verify_fragment "$1/config"; die "the final .config lacks lines of ${FRAGMENTS[*]} (see above)"; }
    chmod 755 "$1"
    rm -rf "$dest"
    mv "$1" "$dest"
    echo "$dest"
}

try_prebuilt() {
    [[ -n $PREBUILT && -d $PREBUILT ]] || return 1
    fragments_for "$PACKAGE"
    local inf
    for inf in "$PREBUILT"/bzImage-*.info; do
        [[ -f $inf ]] || continue
        local img=${inf%.info}
        [[ $(info_get "$inf" package) == "$PACKAGE" ]] || continue
        [[ $(info_get "$inf" fragment_sha256_12) == "$KEY" ]] || continue
        [[ -f $img && -f $img.config && -f $PREBUILT/SHA256SUMS ]] || continue
        if ! (cd "$PREBUILT" && grep -F " $(basename "$img")" SHA256SUMS | sha256sum --quiet -c - >&2); then
            say "prebuilt $img does not match its SHA256SUMS: ignored"; continue
        fi
        local version tmp
        version=$(info_get "$inf" version)
        tmp=$(mktemp -d "$CACHE/.prebuilt.XXXXXX")
        cp "$img" "$tmp/bzImage"
        cp "$img.config" "$tmp/config"
        { sed '$a\' "$inf"; echo "source=prebuilt:$(cd "$PREBUILT" && pwd)"; } >"$tmp/info"
        say "using the prebuilt kernel $img ($PACKAGE $version, fragment $FRAG_HASH; checksum verified)"
        publish "$tmp" "$version"
        return 0
    done
    return 1
}

# --- Debian packages ---------------------------------------------------------------------
APT_UPDATED=0
need_packages() {
    local missing=() p
    for p in "$@"; do
        dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q '^install ok installed$' || missing+=("$p")
    done
    ((${#missing[@]})) || return 0
    if [[ $(id -u) != 0 ]] || ! command -v apt-get >/dev/null; then
        loud "missing Debian packages: ${missing[*]}" "install them as root (apt-get install ${missing[*]}) or run make lab as root"
        exit 1
    fi
    say "installing ${missing[*]} from Debian's archive"
    if ((!APT_UPDATED)); then apt-get update -qq >&2; APT_UPDATED=1; fi
    DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends "${missing[@]}" >&2
}

# A private apt state (lists, cache, sources) so the machine's own apt configuration is
# never changed: the suite's entry reuses this machine's Debian URIs and Signed-By.
# "own" = the machine's own source entries as they are (the release, its updates and security).
APT_OPTS=()
private_apt() {  # $1 = suite or "own" -> sets APT_OPTS
    local suite=$1 dir="$CACHE/apt/$1" src=/etc/apt/sources.list.d/debian.sources
    if [[ $suite == own ]]; then
        mkdir -p "$dir/lists/partial" "$dir/cache/archives/partial"
        APT_OPTS=(-o "Dir::State::Lists=$dir/lists" -o "Dir::Cache=$dir/cache" -o "Dir::Cache::pkgcache="
                  -o "Dir::Cache::srcpkgcache=" -o "APT::Sandbox::User=$(id -un)")
        say "apt-get update (private state, this machine's own Debian sources)"
        apt-get "${APT_OPTS[@]}" update -qq >&2 || { say "apt-get update failed"; return 1; }
        return 0
    fi
    [[ -r $src ]] || { say "$src is missing: cannot derive a Debian source entry"; return 1; }
    local codename
    codename=$(. /etc/os-release && echo "${VERSION_CODENAME:-}")
    # the stanza whose Suites name this release itself (not -security/-updates)
    local entry
    entry=$(awk -v rel="$codename" '
        BEGIN { RS=""; FS="\n" }
        { uris=""; sig=""; ok=0
          for (i = 1; i <= NF; i++) {
            if ($i ~ /^URIs:/)      { uris=$i; sub(/^URIs:[ \t]*/, "", uris) }
            if ($i ~ /^Signed-By:/) { sig=$i;  sub(/^Signed-By:[ \t]*/, "", sig) }
            if ($i ~ /^Suites:/)    { n = split(substr($i, 8), s, /[ \t]+/); for (j = 1; j <= n; j++) if (s[j] == rel) ok=1 }
          }
          if (ok && uris != "") { print uris "\t" sig; exit }
        }' "$src")
    [[ -n $entry ]] || { say "no entry for '$codename' in $src"; return 1; }
    mkdir -p "$dir/sources.list.d" "$dir/lists/partial" "$dir/cache/archives/partial"
    {
        echo "Types: deb"
        echo "URIs: ${entry%%$'\t'*}"
        echo "Suites: $suite"
        echo "Components: main"
        [[ -z ${entry#*$'\t'} ]] || echo "Signed-By: ${entry#*$'\t'}"
    } >"$dir/sources.list.d/lab.sources"
    APT_OPTS=(-o "Dir::Etc::SourceList=$dir/none.list" -o "Dir::Etc::SourceParts=$dir/sources.list.d"
              -o "Dir::State::Lists=$dir/lists" -o "Dir::Cache=$dir/cache"
              -o "Dir::Cache::pkgcache=" -o "Dir::Cache::srcpkgcache=" -o "APT::Sandbox::User=$(id -un)")
    say "apt-get update (private state for $suite, derived from $src)"
    apt-get "${APT_OPTS[@]}" update -qq >&2 || { say "apt-get update for $suite failed"; return 1; }
}

fetch_source() {  # $1 = package, $2 = suite; sets SRC_DEB, SRC_VERSION
    local pkg=$1 suite=$2
    private_apt "$suite" || return 1
    [[ $suite != own ]] || suite="this machine's own sources"
    SRC_VERSION=$(apt-cache "${APT_OPTS[@]}" show "$pkg" 2>/dev/null | sed -n 's/^Version: //p' | sort -rV | head -n1)
    [[ -n $SRC_VERSION ]] || { say "$pkg is not in $suite"; return 1; }
    local d="$CACHE/debs"
    mkdir -p "$d"
    SRC_DEB=$(ls -1 "$d/${pkg}_${SRC_VERSION//\~/%7e}"_*.deb "$d/${pkg}_${SRC_VERSION}"_*.deb 2>/dev/null | head -n1 || true)
    if [[ -z $SRC_DEB ]]; then
        say "downloading $pkg $SRC_VERSION from $suite"
        (cd "$d" && apt-get "${APT_OPTS[@]}" download -q "$pkg=$SRC_VERSION" >&2) || { say "download of $pkg failed"; return 1; }
        SRC_DEB=$(ls -1t "$d/${pkg}"_*.deb | head -n1)
    fi
    dpkg-deb -f "$SRC_DEB" Version | grep -qxF "$SRC_VERSION" || { say "$SRC_DEB is not version $SRC_VERSION"; return 1; }
}

build() {  # $1 = package, $2 = version, $3 = .deb
    local pkg=$1 version=$2 deb=$3
    local src="$CACHE/src/$version" out="$CACHE/build/$version"
    if [[ ! -f $src/Makefile ]]; then
        say "unpacking $deb"
        rm -rf "$src" "$CACHE/src/.x-$version"
        mkdir -p "$CACHE/src/.x-$version"
        dpkg-deb -x "$deb" "$CACHE/src/.x-$version"
        local tarball
        tarball=$(ls -1 "$CACHE/src/.x-$version"/usr/src/linux-source-*.tar.* | head -n1)
        mkdir -p "$src.part"
        tar -xf "$tarball" -C "$src.part" --strip-components=1
        rm -rf "$CACHE/src/.x-$version"
        mv "$src.part" "$src"
    fi
    mkdir -p "$out"
    local start=$SECONDS allconfig="$out/kvm-lab.allconfig"
    cat "${FRAGMENTS[@]}" >"$allconfig"
    say "configuring: allnoconfig + $(cd "$LAB_DIR" && basename -a "${FRAGMENTS[@]}" | paste -sd+) ($KEY) in $out"
    make -s -C "$src" O="$out" KCONFIG_ALLCONFIG="$allconfig" allnoconfig >&2
    verify_fragment "$out/.config" "$src" >&2 || die "allnoconfig + ${FRAGMENTS[*]} lost lines (see above): fix the fragment"
    say "building bzImage with -j$JOBS (a cold build takes ~5-10 min on 2 cores)"
    make -s -C "$src" O="$out" -j"$JOBS" bzImage >&2
    local tmp
    tmp=$(mktemp -d "$CACHE/.build.XXXXXX")
    cp "$out/arch/x86/boot/bzImage" "$tmp/bzImage"
    cp "$out/.config" "$tmp/config"
    {
        echo "package=$pkg"
        echo "version=$version"
        echo "kernelrelease=$(make -s -C "$src" O="$out" kernelrelease)"
        echo "fragment_sha256_12=$KEY"
        echo "build_seconds=$((SECONDS - start))"
        echo "jobs=$JOBS"
        echo "bzImage_bytes=$(stat -c %s "$tmp/bzImage")"
        echo "source=built"
    } >"$tmp/info"
    say "built in $((SECONDS - start)) s"
    publish "$tmp" "$version"
}

main() {
    local entry
    fragments_for "$PACKAGE"
    need_packages qemu-system-x86
    if [[ ${MEMSLOTD_LAB_REFRESH:-0} != 1 ]]; then
        if entry=$(cached_entry "$PACKAGE"); then
            say "cached: $entry ($(info_get "$entry/info" package) $(info_get "$entry/info" version))"
            echo "$entry/bzImage"; return 0
        fi
        if entry=$(try_prebuilt); then echo "$entry/bzImage"; return 0; fi
    fi
    need_packages build-essential flex bison libelf-dev bc cpio xz-utils
    local pkg=$PACKAGE codename
    codename=$(. /etc/os-release && echo "${VERSION_CODENAME:-}")
    if ! fetch_source "$PACKAGE" trixie-backports; then
        loud "$PACKAGE could not be had from trixie-backports." \
             "FALLING BACK to $FALLBACK from this machine's own $codename sources: the lab runs an OLDER kernel than the one measured."
        pkg=$FALLBACK
        fragments_for "$FALLBACK"
        fetch_source "$FALLBACK" own ||
            { loud "NO KERNEL SOURCE: neither $PACKAGE nor $FALLBACK could be had from Debian's archive." \
                   "The lab cannot run; nothing was tested."; exit 1; }
    fi
    if [[ -s $CACHE/$SRC_VERSION-$KEY/bzImage && $(info_get "$CACHE/$SRC_VERSION-$KEY/info" package) == "$pkg" ]]; then
        say "cached: $CACHE/$SRC_VERSION-$KEY"
        echo "$CACHE/$SRC_VERSION-$KEY/bzImage"; return 0
    fi
    entry=$(build "$pkg" "$SRC_VERSION" "$SRC_DEB")
    echo "$entry/bzImage"
}

main "$@"
