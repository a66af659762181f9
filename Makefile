# Build, install and package kiln (README, "Installing").
#   make                                 release binaries, man pages, completions
#   make install [PREFIX=/usr/local] [DESTDIR=] [SETUID_HELPER=1]
#   make uninstall [PREFIX=…] [DESTDIR=]
#   make deb                             target/debian/kiln_VERSION_ARCH.deb
# (target/ is CARGO_TARGET_DIR when that is set.)
# Nothing is rebuilt when the sources are older than the last build, so
# `make && sudo make install` never runs cargo as root.

PREFIX ?= /usr/local
DESTDIR ?=
BINDIR = $(PREFIX)/bin
LIBEXECDIR = $(PREFIX)/libexec
DATADIR = $(PREFIX)/share
KILNDIR = $(DATADIR)/kiln
MANDIR = $(DATADIR)/man
DOCDIR = $(DATADIR)/doc/kiln
BASHCOMPDIR = $(DATADIR)/bash-completion/completions
ZSHCOMPDIR = $(DATADIR)/zsh/vendor-completions
FISHCOMPDIR = $(DATADIR)/fish/vendor_completions.d
# 1: kiln-helper setuid root (README, "Real block devices: kiln-helper").
SETUID_HELPER ?= 0
CARGO ?= cargo
STRIP ?= strip
INSTALL ?= install

D = $(DESTDIR)
# cargo's output directory, as cargo itself chooses it.
T := $(or $(CARGO_TARGET_DIR),target)
# Every [[bin]] of Cargo.toml; kiln-helper goes to libexec, the others to bin.
BINS := $(shell awk '/^\[\[bin\]\]/ {b = 1; next} b && /^name *=/ {gsub(/[" ]/, "", $$0); sub(/^name=/, "", $$0); print; b = 0}' Cargo.toml)
COMMANDS := $(filter-out kiln-helper,$(BINS))
HELPER_MODE := $(if $(filter 1,$(SETUID_HELPER)),4755,0755)
SOURCES := $(shell find src examples -name '*.rs') Cargo.toml Cargo.lock seccomp/default.json

BUILT := $(T)/release/.kiln-built
DOCS := $(T)/.kiln-docs

.PHONY: all install uninstall deb clean

all: $(BUILT) $(DOCS)

$(BUILT): $(SOURCES)
	$(CARGO) build --release --bins
	touch $@

# target/man/NAME.1 and target/completions/{bash,zsh,fish}/, from the clap definitions.
$(DOCS): $(SOURCES)
	$(CARGO) run --release --example gen-docs -- $(T)
	@for c in $(COMMANDS); do test -f $(T)/man/$$c.1 || { \
	    echo "gen-docs wrote no man page for $$c: add its clap command to examples/gen-docs.rs" >&2; \
	    exit 1; }; done
	touch $@

# flavours/ and dib-lib/ are replaced whole, so a flavour removed from the
# source goes away here too; cp -R keeps dib-lib/host-bin's symlinks as they
# are. The sudoers example names the helper where this install put it.
install: all
	$(INSTALL) -d -m 0755 $(D)$(BINDIR) $(D)$(LIBEXECDIR)/kiln $(D)$(KILNDIR)/seccomp \
	    $(D)$(MANDIR)/man1 $(D)$(BASHCOMPDIR) $(D)$(ZSHCOMPDIR) $(D)$(FISHCOMPDIR) \
	    $(D)$(DOCDIR)/examples/sudoers.d $(D)$(DOCDIR)/examples/apparmor.d
	$(INSTALL) -m 0755 $(addprefix $(T)/release/,$(COMMANDS)) $(D)$(BINDIR)/
	$(INSTALL) -m $(HELPER_MODE) $(T)/release/kiln-helper $(D)$(LIBEXECDIR)/kiln/kiln-helper
	rm -rf $(D)$(KILNDIR)/flavours $(D)$(KILNDIR)/dib-lib
	cp -R flavours dib-lib $(D)$(KILNDIR)/
	chmod -R u+rwX,go+rX,go-w $(D)$(KILNDIR)/flavours $(D)$(KILNDIR)/dib-lib
	$(INSTALL) -m 0644 seccomp/default.json seccomp/README.md $(D)$(KILNDIR)/seccomp/
	$(INSTALL) -m 0644 $(patsubst %,$(T)/man/%.1,$(COMMANDS)) $(D)$(MANDIR)/man1/
	$(INSTALL) -m 0644 $(patsubst %,$(T)/completions/bash/%,$(COMMANDS)) $(D)$(BASHCOMPDIR)/
	$(INSTALL) -m 0644 $(patsubst %,$(T)/completions/zsh/_%,$(COMMANDS)) $(D)$(ZSHCOMPDIR)/
	$(INSTALL) -m 0644 $(patsubst %,$(T)/completions/fish/%.fish,$(COMMANDS)) $(D)$(FISHCOMPDIR)/
	$(INSTALL) -m 0644 README.md $(D)$(DOCDIR)/README.md
	sed 's|/usr/local/libexec/kiln/kiln-helper|$(LIBEXECDIR)/kiln/kiln-helper|g' \
	    contrib/sudoers.d/kiln > $(D)$(DOCDIR)/examples/sudoers.d/kiln
	chmod 0644 $(D)$(DOCDIR)/examples/sudoers.d/kiln
	$(INSTALL) -m 0644 contrib/apparmor.d/kiln $(D)$(DOCDIR)/examples/apparmor.d/kiln

uninstall:
	rm -f $(addprefix $(D)$(BINDIR)/,$(COMMANDS))
	rm -rf $(D)$(LIBEXECDIR)/kiln $(D)$(KILNDIR) $(D)$(DOCDIR)
	rm -f $(addprefix $(D)$(MANDIR)/man1/,$(addsuffix .1,$(COMMANDS)))
	rm -f $(addprefix $(D)$(BASHCOMPDIR)/,$(COMMANDS))
	rm -f $(addprefix $(D)$(ZSHCOMPDIR)/_,$(COMMANDS))
	rm -f $(addprefix $(D)$(FISHCOMPDIR)/,$(addsuffix .fish,$(COMMANDS)))

# The package: `make install PREFIX=/usr` into a staging root, Debian's file
# conventions applied (stripped binaries, compressed man pages, copyright), the
# control file from contrib/debian/control.in, and dpkg-deb.
VERSION = $(shell sed -n 's/^version *= *"\(.*\)"/\1/p' Cargo.toml | head -n 1)
DESCRIPTION = $(shell sed -n 's/^description *= *"\(.*\)"/\1/p' Cargo.toml | head -n 1)
DEB_ARCH = $(shell dpkg --print-architecture)
MAINTAINER ?= kiln developers <kiln@localhost>
# dpkg-shlibdeps wants debian/control and the staged package (with its DEBIAN/)
# in debian/PACKAGE.
DEB_WORK = $(T)/debian/work
DEB_ROOT = $(DEB_WORK)/debian/kiln
DEB = $(T)/debian/kiln_$(VERSION)_$(DEB_ARCH).deb

deb: all
	@command -v dpkg-deb >/dev/null && command -v dpkg-shlibdeps >/dev/null || \
	    { echo "make deb needs dpkg-deb and dpkg-shlibdeps: apt-get install dpkg-dev" >&2; exit 1; }
	rm -rf $(DEB_WORK) $(DEB)
	$(MAKE) --no-print-directory install DESTDIR=$(abspath $(DEB_ROOT)) PREFIX=/usr SETUID_HELPER=0
	$(STRIP) --strip-unneeded --remove-section=.comment --remove-section=.note \
	    $(addprefix $(DEB_ROOT)/usr/bin/,$(COMMANDS)) $(DEB_ROOT)/usr/libexec/kiln/kiln-helper
	gzip -9n $(DEB_ROOT)/usr/share/man/man1/*.1
	$(INSTALL) -m 0644 contrib/debian/copyright $(DEB_ROOT)/usr/share/doc/kiln/copyright
	$(INSTALL) -d -m 0755 $(DEB_ROOT)/DEBIAN
	printf 'Source: kiln\n\nPackage: kiln\nArchitecture: any\n' > $(DEB_WORK)/debian/control
	cd $(DEB_WORK) && dpkg-shlibdeps -O $(addprefix -edebian/kiln/usr/bin/,$(COMMANDS)) \
	    -edebian/kiln/usr/libexec/kiln/kiln-helper > shlibs
	sed -e 's|@VERSION@|$(VERSION)|' -e 's|@ARCH@|$(DEB_ARCH)|' \
	    -e 's|@MAINTAINER@|$(MAINTAINER)|' -e 's|@DESCRIPTION@|$(DESCRIPTION)|' \
	    -e "s|@SHLIBS_DEPENDS@|$$(sed -n 's/^shlibs:Depends=//p' $(DEB_WORK)/shlibs)|" \
	    -e "s|@INSTALLED_SIZE@|$$(du -sk --apparent-size --exclude=DEBIAN $(DEB_ROOT) | cut -f1)|" \
	    contrib/debian/control.in > $(DEB_ROOT)/DEBIAN/control
	dpkg-deb --build --root-owner-group $(DEB_ROOT) $(DEB)
	@ls -l $(DEB)

clean:
	rm -rf $(T)/man $(T)/completions $(T)/debian $(BUILT) $(DOCS)
