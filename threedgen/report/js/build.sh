#!/usr/bin/env bash
# Rebuild ../static/viewer.min.js from viewer.js and the pinned three.js (package-lock.json).
# Needs node and npm; the bundle is committed, so installing threedgen needs neither.
set -euo pipefail
cd "$(dirname "$0")"
npm ci --no-audit --no-fund
npx esbuild viewer.js --bundle --minify --format=iife --target=es2020 --legal-comments=none \
    --banner:js="/* three.js 0.187.0 with GLTFLoader and OrbitControls (MIT licence: three.LICENSE.txt); bundled from threedgen/report/js/viewer.js by build.sh */" \
    --outfile=../static/viewer.min.js
cp node_modules/three/LICENSE ../static/three.LICENSE.txt
rm -rf node_modules
