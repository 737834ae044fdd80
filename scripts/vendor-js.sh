#!/usr/bin/env bash
# Refreshes the JavaScript libraries the HTML report inlines (src/ipcproxy/report/vendor/):
# installs the versions package-lock.json records with npm, then copies each library's built file and
# licence beside it. The copies are committed, so building or opening a report never needs npm or a network.
# Run it after changing a version in package.json (then `npm install` there updates the lock).
set -euo pipefail
cd "$(dirname "$0")/../src/ipcproxy/report/vendor"
npm ci --no-audit --no-fund --ignore-scripts
cp node_modules/cytoscape/dist/cytoscape.min.js cytoscape.min.js
cp node_modules/cytoscape/LICENSE LICENSE.cytoscape
cp node_modules/chart.js/dist/chart.umd.min.js chart.umd.min.js
cp node_modules/chart.js/LICENSE.md LICENSE.chart.js
cp node_modules/@kurkle/color/LICENSE.md LICENSE.kurkle-color   # bundled into chart.umd.min.js
rm -rf node_modules
