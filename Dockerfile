# Multi-stage build: compile with the full toolchain, ship a small runtime image as a non-root user.
FROM rust:1-bookworm AS build
WORKDIR /src
# Dependencies first, so source edits do not rebuild them.
COPY Cargo.toml Cargo.lock ./
COPY testkit/Cargo.toml testkit/Cargo.toml
RUN mkdir -p src testkit/src/bin \
    && echo 'fn main() {}' > src/main.rs && touch src/lib.rs \
    && touch testkit/src/lib.rs && echo 'fn main() {}' > testkit/src/bin/ebg-fakes.rs \
    && cargo build --release --locked --bin ebg-notify || true
COPY . .
RUN touch src/main.rs src/lib.rs && cargo build --release --locked --bin ebg-notify

FROM debian:bookworm-slim
RUN apt-get update \
    && apt-get install -y --no-install-recommends ca-certificates \
    && rm -rf /var/lib/apt/lists/* \
    && useradd --system --uid 10001 --no-create-home ebg
COPY --from=build /src/target/release/ebg-notify /usr/local/bin/ebg-notify
USER 10001
ENV EBG_PROFILE=production \
    EBG_HTTP__ADDR=0.0.0.0:3000
EXPOSE 3000
# Configuration and secrets come from EBG_* variables; see config/default.toml.
ENTRYPOINT ["/usr/local/bin/ebg-notify"]
CMD ["serve"]
