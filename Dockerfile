# otari-sandbox-container: the image runs the same install script as CI, so CI tests
# what the image installs. Thin on purpose: this machine cannot build images.
FROM node:24-bookworm-slim

WORKDIR /app
COPY . .
# apt (bubblewrap, Python and its data stack; not the tests' browser and proxy), npm ci,
# build; then drop dev dependencies.
RUN SKIP_TEST_TOOLS=1 bash scripts/install.sh \
 && npm prune --omit=dev \
 && rm -rf /var/lib/apt/lists/* /root/.npm

ENV SANDBOX_SESSIONS_ROOT=/var/sandbox/sessions \
    PORT=8080 \
    HOST=0.0.0.0 \
    NODE_ENV=production
RUN mkdir -p /var/sandbox/sessions && chmod 0711 /var/sandbox/sessions

# The server runs as root inside the container on purpose: that is what lets it give
# each session its own unprivileged host uid, kill a session's processes by uid, and
# (with CAP_SYS_ADMIN) mount a size-capped tmpfs per session. Sandboxed code never runs
# as root: bubblewrap runs it as uid 1000 inside, mapped to an unprivileged uid outside.
# See README "Security" for the docker run flags the sandbox needs.
EXPOSE 8080
HEALTHCHECK --interval=10s --timeout=3s --start-period=20s --retries=3 \
  CMD node -e "fetch('http://127.0.0.1:'+(process.env.PORT||8080)+'/health').then(r=>process.exit(r.ok?0:1),()=>process.exit(1))"
ENTRYPOINT ["/usr/bin/tini", "--"]
CMD ["node", "dist/src/main.js"]
