#!/usr/bin/env bash
# Screenshots of the built site (scripts/build_docs.sh first) for the README:
# the home page, one API page and one tutorial, by headless Chromium.
# Each page is shown in a 1280x1600 frame of a wrapper page: asked for a
# page#anchor directly, headless Chromium draws a blank screenshot, and the
# frame also gives the theme's scripts time to run (search box, table of
# contents).
set -euo pipefail
cd "$(dirname "$0")/.."
CHROMIUM=${CHROMIUM:-chromium}
mkdir -p docs/screenshots
wrapper=$(mktemp -d)
trap 'rm -rf "$wrapper"' EXIT
shot() {  # OUTPUT PAGE_UNDER_SITE[#ANCHOR]
  cat > "$wrapper/frame.html" <<HTML
<html><body style="margin:0"><iframe src="file://$PWD/site/$2"
 style="border:0;width:1280px;height:1600px"></iframe></body></html>
HTML
  "$CHROMIUM" --headless --no-sandbox --disable-gpu --hide-scrollbars \
    --allow-file-access-from-files --virtual-time-budget=3000 \
    --window-size=1280,1600 --screenshot="$1" "file://$wrapper/frame.html" \
    2>/dev/null
}
shot docs/screenshots/home.png index.html
shot docs/screenshots/api_optimizers.png reference/optimizers.html#keras_bayes.optimizers.SOBA
shot docs/screenshots/tutorial.png \
  "tutorials/02_knowing_what_you_dont_know.html#regression-a-band-that-widens-where-there-is-no-data"
