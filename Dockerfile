# Build: docker build -t emqx-ts .   (needs a Docker engine; not available on the dev machines)
FROM node:20-bookworm-slim AS build
WORKDIR /app
RUN apt-get update && apt-get install -y --no-install-recommends python3 make g++ && rm -rf /var/lib/apt/lists/*
COPY package.json package-lock.json binding.gyp tsconfig.json ./
COPY native ./native
RUN npm ci --no-audit --no-fund
COPY src ./src
COPY workers ./workers
RUN npm run build && npm prune --omit=dev

FROM node:20-bookworm-slim
WORKDIR /app
COPY --from=build /app/package.json ./
COPY --from=build /app/node_modules ./node_modules
COPY --from=build /app/build/Release/fdutil.node ./build/Release/fdutil.node
COPY --from=build /app/dist ./dist
USER node
EXPOSE 1883 8082 18083
ENTRYPOINT ["node", "dist/src/main.js"]
