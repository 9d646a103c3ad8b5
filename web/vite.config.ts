import { svelte } from "@sveltejs/vite-plugin-svelte";
import { defineConfig } from "vite";

// The gateway serves the build (web/dist) beside the API on the same origin, so the page calls
// relative paths and needs no proxy in production. `npm run dev` proxies the API to a running
// gateway (KILN_HTTP_URL, e.g. http://127.0.0.1:8080).
const api = process.env.KILN_HTTP_URL ?? "http://127.0.0.1:8080";

export default defineConfig({
  plugins: [svelte()],
  build: { target: "es2022", sourcemap: true, chunkSizeWarningLimit: 600 },
  resolve: { dedupe: ["@bufbuild/protobuf", "@connectrpc/connect"] },
  server: { proxy: { "^/kiln\\.v1\\.": api, "/healthz": api } },
});
