<?xml version="1.0" encoding="utf-8"?>
<!DOCTYPE TS>
<TS version="2.1" language="de">
    <context>
        <name>ChatPanel</name>
        <message>
            <location filename="../chat_panel.py" line="148" />
            <source>Raster</source>
            <translation>Raster</translation>
        </message>
        <message>
            <location filename="../chat_panel.py" line="149" />
            <source>Visible extent only</source>
            <translation>Nur sichtbarer Ausschnitt</translation>
        </message>
        <message>
            <location filename="../chat_panel.py" line="156" />
            <source>Ask only about the area inside the selected polygons of this layer</source>
            <translation>Nur nach der Fläche innerhalb der ausgewählten Polygone dieses Layers fragen</translation>
        </message>
        <message>
            <location filename="../chat_panel.py" line="157" />
            <source>Selected polygons of</source>
            <translation>Ausgewählte Polygone von</translation>
        </message>
        <message>
            <location filename="../chat_panel.py" line="162" />
            <source>Land cover</source>
            <translation>Landbedeckung</translation>
        </message>
        <message>
            <location filename="../chat_panel.py" line="167" />
            <source>Objects</source>
            <translation>Objekte</translation>
        </message>
        <message>
            <location filename="../chat_panel.py" line="175" />
            <source>A second image of the same place; the backend runs a change-detection model and the chat can answer what changed</source>
            <translation>Ein zweites Bild desselben Ortes; das Backend führt ein Änderungserkennungsmodell aus und der Chat kann beantworten, was sich verändert hat</translation>
        </message>
        <message>
            <location filename="../chat_panel.py" line="180" />
            <source>Whether the compare image was taken after (later) or before (earlier) the selected raster</source>
            <translation>Ob das Vergleichsbild nach (später) oder vor (früher) dem gewählten Raster aufgenommen wurde</translation>
        </message>
        <message>
            <location filename="../chat_panel.py" line="184" />
            <source>Compare with</source>
            <translation>Vergleichen mit</translation>
        </message>
        <message>
            <location filename="../chat_panel.py" line="186" />
            <source>optional: task=model-id, ... (run by the backend first)</source>
            <translation>optional: Aufgabe=Modell-ID, … (zuerst vom Backend ausgeführt)</translation>
        </message>
        <message>
            <location filename="../chat_panel.py" line="187" />
            <source>Models</source>
            <translation>Modelle</translation>
        </message>
        <message>
            <location filename="../chat_panel.py" line="196" />
            <source>Answer with</source>
            <translation>Antworten mit</translation>
        </message>
        <message>
            <location filename="../chat_panel.py" line="199" />
            <source>Endpoint</source>
            <translation>Endpunkt</translation>
        </message>
        <message>
            <location filename="../chat_panel.py" line="200" />
            <source>Endpoint model</source>
            <translation>Modell am Endpunkt</translation>
        </message>
        <message>
            <location filename="../chat_panel.py" line="211" />
            <source>e.g. How many ships are there? Where are they?</source>
            <translation>z. B. Wie viele Schiffe gibt es? Wo sind sie?</translation>
        </message>
        <message>
            <location filename="../chat_panel.py" line="213" />
            <source>Ask</source>
            <translation>Fragen</translation>
        </message>
        <message>
            <location filename="../chat_panel.py" line="215" />
            <source>Stop</source>
            <translation>Stopp</translation>
        </message>
        <message>
            <location filename="../chat_panel.py" line="223" />
            <source>Copy</source>
            <translation>Kopieren</translation>
        </message>
        <message>
            <location filename="../chat_panel.py" line="225" />
            <source>Save…</source>
            <translation>Speichern…</translation>
        </message>
        <message>
            <location filename="../chat_panel.py" line="227" />
            <source>Clear</source>
            <translation>Leeren</translation>
        </message>
        <message>
            <location filename="../chat_panel.py" line="268" />
            <source>ask about the visible extent or the selected polygons, not both: untick 'Visible extent only' or clear 'Selected polygons of'</source>
            <translation>nach dem sichtbaren Ausschnitt oder den ausgewählten Polygonen fragen, nicht nach beidem: 'Nur sichtbarer Ausschnitt' abwählen oder 'Ausgewählte Polygone von' leeren</translation>
        </message>
        <message>
            <location filename="../chat_panel.py" line="307" />
            <source>layer '{name}' is not a file raster; export it to GeoTIFF first to compare with it</source>
            <translation>Layer '{name}' ist kein Datei-Raster; exportieren Sie ihn zuerst als GeoTIFF, um damit zu vergleichen</translation>
        </message>
        <message>
            <location filename="../chat_panel.py" line="312" />
            <source>layer '{name}' is the raster you ask about; choose a different image to compare with</source>
            <translation>Layer '{name}' ist das Raster, nach dem Sie fragen; wählen Sie ein anderes Bild zum Vergleichen</translation>
        </message>
        <message>
            <location filename="../chat_panel.py" line="332" />
            <source>asking…</source>
            <translation>Frage wird gestellt…</translation>
        </message>
        <message>
            <location filename="../chat_panel.py" line="367" />
            <source>writing…</source>
            <translation>Antwort wird geschrieben…</translation>
        </message>
        <message>
            <location filename="../chat_panel.py" line="416" />
            <source>{mode} answer · {seconds} s</source>
            <translation>Antwort ({mode}) · {seconds} s</translation>
        </message>
        <message>
            <location filename="../chat_panel.py" line="483" />
            <source>{ref} has no map geometry to zoom to</source>
            <translation>{ref} hat keine Kartengeometrie, auf die gezoomt werden kann</translation>
        </message>
        <message>
            <location filename="../chat_panel.py" line="508" />
            <source>conversation copied</source>
            <translation>Unterhaltung kopiert</translation>
        </message>
        <message>
            <location filename="../chat_panel.py" line="516" />
            <source>saved to {path}</source>
            <translation>gespeichert unter {path}</translation>
        </message>
        <message>
            <location filename="../chat_panel.py" line="519" />
            <source>Markdown (*.md)</source>
            <translation>Markdown (*.md)</translation>
        </message>
        <message>
            <location filename="../chat_panel.py" line="519" />
            <source>Save conversation</source>
            <translation>Unterhaltung speichern</translation>
        </message>
        <message>
            <location filename="../chat_panel.py" line="87" />
            <source>Facts only (no language model)</source>
            <translation>Nur Fakten (ohne Sprachmodell)</translation>
        </message>
        <message>
            <location filename="../chat_panel.py" line="88" />
            <source>Built-in SmolLM2-135M</source>
            <translation>Eingebautes SmolLM2-135M</translation>
        </message>
        <message>
            <location filename="../chat_panel.py" line="89" />
            <source>OpenAI-compatible endpoint</source>
            <translation>OpenAI-kompatibler Endpunkt</translation>
        </message>
        <message>
            <location filename="../chat_panel.py" line="91" />
            <source>later image</source>
            <translation>späteres Bild</translation>
        </message>
        <message>
            <location filename="../chat_panel.py" line="92" />
            <source>earlier image</source>
            <translation>früheres Bild</translation>
        </message>
    </context>
    <context>
        <name>RsfmDock</name>
        <message>
            <location filename="../gui/dock.py" line="107" />
            <source>Backend: not started</source>
            <translation>Backend: nicht gestartet</translation>
        </message>
        <message>
            <location filename="../gui/dock.py" line="122" />
            <source>The chat panel failed to load: {error}</source>
            <translation>Das Chat-Fenster konnte nicht geladen werden: {error}</translation>
        </message>
        <message>
            <location filename="../gui/dock.py" line="123" />
            <source>CHAT PANEL PLACEHOLDER – the grounded chat about the selected raster (qgis_rsfm/chat_panel.py) is not installed in this build.</source>
            <translation>PLATZHALTER FÜR DEN CHAT – der Chat über das ausgewählte Raster (qgis_rsfm/chat_panel.py) ist in diesem Build nicht installiert.</translation>
        </message>
        <message>
            <location filename="../gui/dock.py" line="161" />
            <source>Backend: starting…</source>
            <translation>Backend: wird gestartet…</translation>
        </message>
        <message>
            <location filename="../gui/dock.py" line="167" />
            <source>RSFM: start backend</source>
            <translation>RSFM: Backend starten</translation>
        </message>
        <message>
            <location filename="../gui/dock.py" line="171" />
            <source>Backend: not available – {error}</source>
            <translation>Backend: nicht verfügbar – {error}</translation>
        </message>
        <message>
            <location filename="../gui/dock.py" line="205" />
            <source>Backend: stopped – click ↻ to restart it</source>
            <translation>Backend: gestoppt – zum Neustart auf ↻ klicken</translation>
        </message>
        <message>
            <location filename="../gui/dock.py" line="213" />
            <source>Backend {version} on {device} · {n_models} models · jobs running {running}, queued {queued}</source>
            <translation>Backend {version} auf {device} · {n_models} Modelle · Aufträge laufend {running}, wartend {queued}</translation>
        </message>
        <message>
            <location filename="../gui/dock.py" line="51" />
            <source>RSFM – remote-sensing models</source>
            <translation>RSFM – Fernerkundungsmodelle</translation>
        </message>
        <message>
            <location filename="../gui/dock.py" line="68" />
            <source>Start or reconnect the backend and reload the model list</source>
            <translation>Backend starten oder neu verbinden und die Modellliste neu laden</translation>
        </message>
        <message>
            <location filename="../gui/dock.py" line="72" />
            <source>Model browser</source>
            <translation>Modellbrowser</translation>
        </message>
        <message>
            <location filename="../gui/dock.py" line="73" />
            <source>Settings</source>
            <translation>Einstellungen</translation>
        </message>
        <message>
            <location filename="../gui/dock.py" line="75" />
            <source>Self-test and diagnostics</source>
            <translation>Selbsttest und Diagnose</translation>
        </message>
        <message>
            <location filename="../gui/dock.py" line="97" />
            <source>Tasks</source>
            <translation>Aufgaben</translation>
        </message>
        <message>
            <location filename="../gui/dock.py" line="98" />
            <source>Chat</source>
            <translation>Chat</translation>
        </message>
    </context>
    <context>
        <name>RsfmModelBrowser</name>
        <message>
            <location filename="../gui/model_browser.py" line="107" />
            <source>unknown (no rsfm-&lt;task&gt; tag)</source>
            <translation>unbekannt (kein rsfm-&lt;task&gt;-Tag)</translation>
        </message>
        <message>
            <location filename="../gui/model_browser.py" line="108" />
            <source>Repository</source>
            <translation>Repository</translation>
        </message>
        <message>
            <location filename="../gui/model_browser.py" line="109" />
            <source>Revision</source>
            <translation>Revision</translation>
        </message>
        <message>
            <location filename="../gui/model_browser.py" line="110" />
            <source>Licence</source>
            <translation>Lizenz</translation>
        </message>
        <message>
            <location filename="../gui/model_browser.py" line="110" />
            <source>not stated</source>
            <translation>nicht angegeben</translation>
        </message>
        <message>
            <location filename="../gui/model_browser.py" line="111" />
            <source>Downloads</source>
            <translation>Downloads</translation>
        </message>
        <message>
            <location filename="../gui/model_browser.py" line="112" />
            <source>Last modified</source>
            <translation>Zuletzt geändert</translation>
        </message>
        <message>
            <location filename="../gui/model_browser.py" line="113" />
            <source>Hub</source>
            <translation>Hub</translation>
        </message>
        <message>
            <location filename="../gui/model_browser.py" line="115" />
            <source>On the Hub, not installed yet. Install it to see its full card (classes, bands, pixel size) and to use it.</source>
            <translation>Auf dem Hub, noch nicht installiert. Installieren Sie es, um die vollständige Modellkarte (Klassen, Kanäle, Pixelgröße) zu sehen und es zu nutzen.</translation>
        </message>
        <message>
            <location filename="../gui/model_browser.py" line="123" />
            <source>Tags</source>
            <translation>Tags</translation>
        </message>
        <message>
            <location filename="../gui/model_browser.py" line="156" />
            <source>RSFM model browser</source>
            <translation>RSFM-Modellbrowser</translation>
        </message>
        <message>
            <location filename="../gui/model_browser.py" line="168" />
            <source>Task</source>
            <translation>Aufgabe</translation>
        </message>
        <message>
            <location filename="../gui/model_browser.py" line="170" />
            <source>All tasks</source>
            <translation>Alle Aufgaben</translation>
        </message>
        <message>
            <location filename="../gui/model_browser.py" line="174" />
            <source>Check against layer</source>
            <translation>Mit Layer abgleichen</translation>
        </message>
        <message>
            <location filename="../gui/model_browser.py" line="192" />
            <source>Hub: not searched yet.</source>
            <translation>Hub: noch nicht durchsucht.</translation>
        </message>
        <message>
            <location filename="../gui/model_browser.py" line="195" />
            <source>Search the Hub</source>
            <translation>Hub durchsuchen</translation>
        </message>
        <message>
            <location filename="../gui/model_browser.py" line="196" />
            <source>Install</source>
            <translation>Installieren</translation>
        </message>
        <message>
            <location filename="../gui/model_browser.py" line="197" />
            <source>Cancel</source>
            <translation>Abbrechen</translation>
        </message>
        <message>
            <location filename="../gui/model_browser.py" line="212" />
            <source>Reload from backend</source>
            <translation>Vom Backend neu laden</translation>
        </message>
        <message>
            <location filename="../gui/model_browser.py" line="254" />
            <source>Installed · {task}</source>
            <translation>Installiert · {task}</translation>
        </message>
        <message>
            <location filename="../gui/model_browser.py" line="264" />
            <source>On the Hub, not installed · {task}</source>
            <translation>Auf dem Hub, nicht installiert · {task}</translation>
        </message>
        <message>
            <location filename="../gui/model_browser.py" line="273" />
            <source>No model matches. Add model folders in RSFM Settings, search the Hub, or untick '{option}'.</source>
            <translation>Kein Modell passt. Fügen Sie in den RSFM-Einstellungen Modellordner hinzu, durchsuchen Sie den Hub oder deaktivieren Sie „{option}“.</translation>
        </message>
        <message>
            <location filename="../gui/model_browser.py" line="274" />
            <source>Only models that fit</source>
            <translation>Nur passende Modelle</translation>
        </message>
        <message>
            <location filename="../gui/model_browser.py" line="313" />
            <source>Hub: searching…</source>
            <translation>Hub: wird durchsucht…</translation>
        </message>
        <message>
            <location filename="../gui/model_browser.py" line="314" />
            <source>RSFM: list Hub models</source>
            <translation>RSFM: Hub-Modelle auflisten</translation>
        </message>
        <message>
            <location filename="../gui/model_browser.py" line="324" />
            <source>Hub: could not list models – {error}</source>
            <translation>Hub: Modelle konnten nicht aufgelistet werden – {error}</translation>
        </message>
        <message>
            <location filename="../gui/model_browser.py" line="330" />
            <source>cache only (offline)</source>
            <translation>nur Cache (offline)</translation>
        </message>
        <message>
            <location filename="../gui/model_browser.py" line="331" />
            <source>Hub ({where}): {n} RSFM models, {n_new} not installed.</source>
            <translation>Hub ({where}): {n} RSFM-Modelle, {n_new} nicht installiert.</translation>
        </message>
        <message>
            <location filename="../gui/model_browser.py" line="344" />
            <source>RSFM: install {repo}</source>
            <translation>RSFM: {repo} installieren</translation>
        </message>
        <message>
            <location filename="../gui/model_browser.py" line="352" />
            <source>Installing {repo}…</source>
            <translation>{repo} wird installiert…</translation>
        </message>
        <message>
            <location filename="../gui/model_browser.py" line="362" />
            <source>Cancelling the download…</source>
            <translation>Download wird abgebrochen…</translation>
        </message>
        <message>
            <location filename="../gui/model_browser.py" line="375" />
            <source>Installed {name}; it is now in the task pages' model lists.</source>
            <translation>{name} installiert; es steht jetzt in den Modelllisten der Aufgabenseiten.</translation>
        </message>
        <message>
            <location filename="../gui/model_browser.py" line="380" />
            <source>Cancelled; {name} was not installed.</source>
            <translation>Abgebrochen; {name} wurde nicht installiert.</translation>
        </message>
        <message>
            <location filename="../gui/model_browser.py" line="383" />
            <source>Could not install {name}: {error}</source>
            <translation>{name} konnte nicht installiert werden: {error}</translation>
        </message>
        <message>
            <location filename="../gui/model_browser.py" line="61" />
            <source>Architecture</source>
            <translation>Architektur</translation>
        </message>
        <message>
            <location filename="../gui/model_browser.py" line="62" />
            <source>Bands</source>
            <translation>Kanäle</translation>
        </message>
        <message>
            <location filename="../gui/model_browser.py" line="63" />
            <source>Pixel size (GSD)</source>
            <translation>Pixelgröße (GSD)</translation>
        </message>
        <message>
            <location filename="../gui/model_browser.py" line="64" />
            <source>Tile</source>
            <translation>Kachel</translation>
        </message>
        <message>
            <location filename="../gui/model_browser.py" line="66" />
            <source>Training data</source>
            <translation>Trainingsdaten</translation>
        </message>
        <message>
            <location filename="../gui/model_browser.py" line="67" />
            <source>Source</source>
            <translation>Quelle</translation>
        </message>
        <message>
            <location filename="../gui/model_browser.py" line="78" />
            <source>Fits the chosen layer.</source>
            <translation>Passt zum gewählten Layer.</translation>
        </message>
        <message>
            <location filename="../gui/model_browser.py" line="85" />
            <source>Classes ({n})</source>
            <translation>Klassen ({n})</translation>
        </message>
        <message>
            <location filename="../gui/model_browser.py" line="94" />
            <source>Metrics (held-back data)</source>
            <translation>Kennzahlen (zurückgehaltene Daten)</translation>
        </message>
    </context>
    <context>
        <name>RsfmPlugin</name>
        <message>
            <location filename="../plugin.py" line="77" />
            <source>RSFM</source>
            <translation>RSFM</translation>
        </message>
        <message>
            <location filename="../plugin.py" line="81" />
            <source>RSFM panel</source>
            <translation>RSFM-Bedienfeld</translation>
        </message>
        <message>
            <location filename="../plugin.py" line="83" />
            <source>Model browser…</source>
            <translation>Modellbrowser…</translation>
        </message>
        <message>
            <location filename="../plugin.py" line="84" />
            <source>Settings…</source>
            <translation>Einstellungen…</translation>
        </message>
        <message>
            <location filename="../plugin.py" line="86" />
            <source>Self-test and diagnostics…</source>
            <translation>Selbsttest und Diagnose…</translation>
        </message>
    </context>
    <context>
        <name>RsfmProcessing</name>
        <message>
            <location filename="../processing/base.py" line="106" />
            <location filename="../processing/status.py" line="42" />
            <source>Remote-sensing models</source>
            <translation>Fernerkundungsmodelle</translation>
        </message>
        <message>
            <location filename="../processing/base.py" line="115" />
            <source>The model runs in the RSFM backend (started automatically). Leave Model empty to use the first installed model for this task that fits the layer.</source>
            <translation>Das Modell läuft im RSFM-Backend (wird automatisch gestartet). Lassen Sie „Modell“ leer, um das erste installierte Modell für diese Aufgabe zu verwenden, das zum Layer passt.</translation>
        </message>
        <message>
            <location filename="../processing/base.py" line="127" />
            <source>Before image</source>
            <translation>Vorher-Bild</translation>
        </message>
        <message>
            <location filename="../processing/base.py" line="127" />
            <source>Input raster</source>
            <translation>Eingaberaster</translation>
        </message>
        <message>
            <location filename="../processing/base.py" line="130" />
            <source>After image</source>
            <translation>Nachher-Bild</translation>
        </message>
        <message>
            <location filename="../processing/base.py" line="131" />
            <source>Model id (empty: first fitting model)</source>
            <translation>Modell-ID (leer: erstes passendes Modell)</translation>
        </message>
        <message>
            <location filename="../processing/base.py" line="133" />
            <source>Area to process</source>
            <translation>Zu verarbeitender Bereich</translation>
        </message>
        <message>
            <location filename="../processing/base.py" line="136" />
            <source>Limit to polygons (only their inside is processed)</source>
            <translation>Auf Polygone beschränken (nur ihr Inneres wird verarbeitet)</translation>
        </message>
        <message>
            <location filename="../processing/base.py" line="140" />
            <source>Classify</source>
            <translation>Klassifizieren</translation>
        </message>
        <message>
            <location filename="../processing/base.py" line="140" />
            <source>Per polygon of 'Limit to polygons'</source>
            <translation>Je Polygon aus „Auf Polygone beschränken“</translation>
        </message>
        <message>
            <location filename="../processing/base.py" line="140" />
            <source>Per tile (grid)</source>
            <translation>Je Kachel (Raster)</translation>
        </message>
        <message>
            <location filename="../processing/base.py" line="144" />
            <source>Score threshold (empty: model default)</source>
            <translation>Konfidenzschwelle (leer: Modellvorgabe)</translation>
        </message>
        <message>
            <location filename="../processing/base.py" line="148" />
            <source>Also write polygons (GeoPackage)</source>
            <translation>Auch Polygone schreiben (GeoPackage)</translation>
        </message>
        <message>
            <location filename="../processing/base.py" line="151" />
            <source>Bands to use, e.g. 1,2,3 (empty: first N)</source>
            <translation>Zu verwendende Kanäle, z. B. 1,2,3 (leer: die ersten N)</translation>
        </message>
        <message>
            <location filename="../processing/base.py" line="153" />
            <source>Tile size [px] (empty: model default)</source>
            <translation>Kachelgröße [px] (leer: Modellvorgabe)</translation>
        </message>
        <message>
            <location filename="../processing/base.py" line="155" />
            <source>Tile overlap [px] (empty: model default)</source>
            <translation>Kachelüberlappung [px] (leer: Modellvorgabe)</translation>
        </message>
        <message>
            <location filename="../processing/base.py" line="157" />
            <source>Batch size (empty: model default)</source>
            <translation>Batchgröße (leer: Modellvorgabe)</translation>
        </message>
        <message>
            <location filename="../processing/base.py" line="159" />
            <source>Run even if the pixel size is far from the model's</source>
            <translation>Auch ausführen, wenn die Pixelgröße stark von der des Modells abweicht</translation>
        </message>
        <message>
            <location filename="../processing/base.py" line="166" />
            <source>Output folder</source>
            <translation>Ausgabeordner</translation>
        </message>
        <message>
            <location filename="../processing/base.py" line="168" />
            <source>Main output file</source>
            <translation>Hauptausgabedatei</translation>
        </message>
        <message>
            <location filename="../processing/base.py" line="169" />
            <source>Backend job id</source>
            <translation>Backend-Auftrags-ID</translation>
        </message>
        <message>
            <location filename="../processing/base.py" line="170" />
            <source>Folder with all outputs</source>
            <translation>Ordner mit allen Ausgaben</translation>
        </message>
        <message>
            <location filename="../processing/base.py" line="197" />
            <source>No {task} model called '{model}'. Available: {others}.</source>
            <translation>Kein {task}-Modell namens „{model}“. Verfügbar: {others}.</translation>
        </message>
        <message>
            <location filename="../processing/base.py" line="201" />
            <source>No {task} model is installed in the backend; add a model package folder in RSFM Settings &gt; Model folders, or download one in the model browser.</source>
            <translation>Im Backend ist kein {task}-Modell installiert; fügen Sie unter RSFM-Einstellungen &gt; Modellordner einen Ordner mit Modellpaketen hinzu oder laden Sie eines im Modellbrowser herunter.</translation>
        </message>
        <message>
            <location filename="../processing/base.py" line="225" />
            <source>Model: {model}</source>
            <translation>Modell: {model}</translation>
        </message>
        <message>
            <location filename="../processing/base.py" line="247" />
            <source>Classifying per polygon needs polygons: choose a polygon layer in 'Limit to polygons' (tick 'Selected features only' to classify only the selected ones).</source>
            <translation>Die Klassifizierung je Polygon braucht Polygone: Wählen Sie unter „Auf Polygone beschränken“ einen Polygonlayer (aktivieren Sie „Nur gewählte Objekte“, um nur die ausgewählten zu klassifizieren).</translation>
        </message>
        <message>
            <location filename="../processing/base.py" line="269" />
            <source>Backend job {job} submitted</source>
            <translation>Backend-Auftrag {job} übermittelt</translation>
        </message>
        <message>
            <location filename="../processing/base.py" line="279" />
            <source>The before image '{before}' and the after image '{after}' do not overlap, so there is nothing to compare. Choose two images of the same place (they may use different CRSs).</source>
            <translation>Das Vorher-Bild „{before}“ und das Nachher-Bild „{after}“ überlappen sich nicht, es gibt also nichts zu vergleichen. Wählen Sie zwei Bilder desselben Ortes (sie dürfen unterschiedliche KBS haben).</translation>
        </message>
        <message>
            <location filename="../processing/base.py" line="287" />
            <source>The run was cancelled; no output was written.</source>
            <translation>Der Lauf wurde abgebrochen; es wurde keine Ausgabe geschrieben.</translation>
        </message>
        <message>
            <location filename="../processing/base.py" line="289" />
            <source>The backend job failed: {error}</source>
            <translation>Der Backend-Auftrag ist fehlgeschlagen: {error}</translation>
        </message>
        <message>
            <location filename="../processing/base.py" line="292" />
            <source>The backend finished but wrote no output; see its log.</source>
            <translation>Das Backend ist fertig, hat aber keine Ausgabe geschrieben; siehe sein Protokoll.</translation>
        </message>
        <message>
            <location filename="../processing/base.py" line="297" />
            <source>Statistics: {stats}</source>
            <translation>Statistik: {stats}</translation>
        </message>
        <message>
            <location filename="../processing/base.py" line="324" />
            <source>Bands must be numbers separated by commas, e.g. 1,2,3 (got '{bands}').</source>
            <translation>Kanäle müssen durch Kommas getrennte Zahlen sein, z. B. 1,2,3 (erhalten: „{bands}“).</translation>
        </message>
        <message>
            <location filename="../processing/change.py" line="15" />
            <source>Detect changes between two images</source>
            <translation>Änderungen zwischen zwei Bildern erkennen</translation>
        </message>
        <message>
            <location filename="../processing/change.py" line="16" />
            <source>Maps what changed between a before and an after image.</source>
            <translation>Kartiert, was sich zwischen einem Vorher- und einem Nachher-Bild geändert hat.</translation>
        </message>
        <message>
            <location filename="../processing/change.py" line="17" />
            <source>Compares two co-registered images of the same place taken at different times and writes a change raster (1 = changed) in the before image's grid; optionally also change polygons (GeoPackage). Both images must cover the same area with the same bands.</source>
            <translation>Vergleicht zwei zueinander registrierte Bilder desselben Ortes aus verschiedenen Zeiten und schreibt ein Änderungsraster (1 = geändert) im Raster des Vorher-Bildes; optional auch Änderungspolygone (GeoPackage). Beide Bilder müssen dasselbe Gebiet mit denselben Kanälen abdecken.</translation>
        </message>
        <message>
            <location filename="../processing/classify.py" line="15" />
            <source>Classify scenes</source>
            <translation>Szenen klassifizieren</translation>
        </message>
        <message>
            <location filename="../processing/classify.py" line="16" />
            <source>Classifies each tile of a raster into a scene class.</source>
            <translation>Ordnet jede Kachel eines Rasters einer Szenenklasse zu.</translation>
        </message>
        <message>
            <location filename="../processing/classify.py" line="17" />
            <source>Cuts the raster into model-sized tiles and gives each tile a scene class (e.g. airport, forest, residential) with a score. The output is a polygon grid (GeoPackage) with class and score fields. With 'Classify: per polygon', each polygon of 'Limit to polygons' gets one class instead (probabilities averaged over the tiles covering it, weighted by their overlap), written with the polygon's geometry and its feature id (source_fid).</source>
            <translation>Zerlegt das Raster in Kacheln der Modellgröße und gibt jeder Kachel eine Szenenklasse (z. B. Flughafen, Wald, Wohngebiet) mit Konfidenz. Die Ausgabe ist ein Polygongitter (GeoPackage) mit Klassen- und Konfidenzfeldern. Mit „Klassifizieren: je Polygon“ erhält stattdessen jedes Polygon aus „Auf Polygone beschränken“ eine Klasse (Wahrscheinlichkeiten über die abdeckenden Kacheln gemittelt, gewichtet nach ihrer Überlappung), geschrieben mit der Geometrie des Polygons und seiner Objekt-ID (source_fid).</translation>
        </message>
        <message>
            <location filename="../processing/detect.py" line="15" />
            <source>Detect objects (boxes)</source>
            <translation>Objekte erkennen (Rahmen)</translation>
        </message>
        <message>
            <location filename="../processing/detect.py" line="16" />
            <source>Detects objects and writes their boxes as polygons.</source>
            <translation>Erkennt Objekte und schreibt ihre Rahmen als Polygone.</translation>
        </message>
        <message>
            <location filename="../processing/detect.py" line="17" />
            <source>Runs an object detector over the raster in overlapping tiles, merges duplicates across tile borders (NMS) and writes one polygon per object (GeoPackage) with class, score and provenance fields.</source>
            <translation>Führt einen Objektdetektor in überlappenden Kacheln über das Raster aus, führt Duplikate an Kachelgrenzen zusammen (NMS) und schreibt ein Polygon je Objekt (GeoPackage) mit Klasse, Konfidenz und Herkunftsfeldern.</translation>
        </message>
        <message>
            <location filename="../processing/detect_rotated.py" line="15" />
            <source>Detect objects (rotated boxes)</source>
            <translation>Objekte erkennen (gedrehte Rahmen)</translation>
        </message>
        <message>
            <location filename="../processing/detect_rotated.py" line="16" />
            <source>Detects objects with oriented boxes and writes them as polygons.</source>
            <translation>Erkennt Objekte mit ausgerichteten Rahmen und schreibt sie als Polygone.</translation>
        </message>
        <message>
            <location filename="../processing/detect_rotated.py" line="17" />
            <source>Runs a rotated-box detector (ships, planes, vehicles at any heading) over the raster in tiles and writes each object as a rotated rectangle (GeoPackage) with class, score, angle, length and width fields.</source>
            <translation>Führt einen Detektor für gedrehte Rahmen (Schiffe, Flugzeuge, Fahrzeuge in jeder Ausrichtung) in Kacheln über das Raster aus und schreibt jedes Objekt als gedrehtes Rechteck (GeoPackage) mit Feldern für Klasse, Konfidenz, Winkel, Länge und Breite.</translation>
        </message>
        <message>
            <location filename="../processing/instances.py" line="15" />
            <source>Segment object instances</source>
            <translation>Objektinstanzen segmentieren</translation>
        </message>
        <message>
            <location filename="../processing/instances.py" line="16" />
            <source>Outlines individual objects as polygons.</source>
            <translation>Umreißt einzelne Objekte als Polygone.</translation>
        </message>
        <message>
            <location filename="../processing/instances.py" line="17" />
            <source>Runs an instance segmentation model over the raster in tiles and writes one outline polygon per object (GeoPackage) with class, score and provenance fields; objects cut by tile borders are merged.</source>
            <translation>Führt ein Instanzsegmentierungsmodell in Kacheln über das Raster aus und schreibt ein Umrisspolygon je Objekt (GeoPackage) mit Klasse, Konfidenz und Herkunftsfeldern; von Kachelgrenzen zerschnittene Objekte werden zusammengeführt.</translation>
        </message>
        <message>
            <location filename="../processing/provider.py" line="28" />
            <source>RSFM remote-sensing models</source>
            <translation>RSFM-Fernerkundungsmodelle</translation>
        </message>
        <message>
            <location filename="../processing/segment.py" line="15" />
            <source>Segment raster (land cover)</source>
            <translation>Raster segmentieren (Landbedeckung)</translation>
        </message>
        <message>
            <location filename="../processing/segment.py" line="16" />
            <source>Labels every pixel of a raster with a land-cover class.</source>
            <translation>Weist jedem Pixel eines Rasters eine Landbedeckungsklasse zu.</translation>
        </message>
        <message>
            <location filename="../processing/segment.py" line="17" />
            <source>Runs a semantic segmentation model over the raster in overlapping tiles and writes a class raster (GeoTIFF with the class colours) in the input's CRS and grid. Optionally also writes the classes as polygons (GeoPackage).</source>
            <translation>Führt ein semantisches Segmentierungsmodell in überlappenden Kacheln über das Raster aus und schreibt ein Klassenraster (GeoTIFF mit den Klassenfarben) im KBS und Raster der Eingabe. Optional werden die Klassen auch als Polygone (GeoPackage) geschrieben.</translation>
        </message>
        <message>
            <location filename="../processing/status.py" line="39" />
            <source>Backend status and installed models</source>
            <translation>Backend-Status und installierte Modelle</translation>
        </message>
        <message>
            <location filename="../processing/status.py" line="48" />
            <source>Reports the RSFM backend's state and the model ids each task can use.</source>
            <translation>Meldet den Zustand des RSFM-Backends und die Modell-IDs, die jede Aufgabe verwenden kann.</translation>
        </message>
        <message>
            <location filename="../processing/status.py" line="51" />
            <source>Starts the backend if needed, then lists every installed model with its task, bands and pixel size. Use the ids it prints as the Model parameter of the other RSFM algorithms. OUTPUT is the same information as JSON.</source>
            <translation>Startet bei Bedarf das Backend und listet dann jedes installierte Modell mit Aufgabe, Kanälen und Pixelgröße auf. Verwenden Sie die ausgegebenen IDs als Parameter „Modell“ der anderen RSFM-Algorithmen. OUTPUT enthält dieselben Angaben als JSON.</translation>
        </message>
        <message>
            <location filename="../processing/status.py" line="62" />
            <source>Task</source>
            <translation>Aufgabe</translation>
        </message>
        <message>
            <location filename="../processing/status.py" line="64" />
            <source>Status as JSON</source>
            <translation>Status als JSON</translation>
        </message>
        <message>
            <location filename="../processing/status.py" line="65" />
            <source>Number of models listed</source>
            <translation>Anzahl der aufgelisteten Modelle</translation>
        </message>
        <message>
            <location filename="../processing/status.py" line="79" />
            <source>Backend {version} at {url} on {device}</source>
            <translation>Backend {version} unter {url} auf {device}</translation>
        </message>
        <message>
            <location filename="../processing/status.py" line="82" />
            <source>{id}  [{task}]  {bands} bands, {gsd} m/px, {classes} classes, licence {licence}</source>
            <translation>{id}  [{task}]  {bands} Kanäle, {gsd} m/px, {classes} Klassen, Lizenz {licence}</translation>
        </message>
        <message>
            <location filename="../processing/status.py" line="87" />
            <source>No model is installed for this task; add a model folder in RSFM Settings.</source>
            <translation>Für diese Aufgabe ist kein Modell installiert; fügen Sie in den RSFM-Einstellungen einen Modellordner hinzu.</translation>
        </message>
    </context>
    <context>
        <name>RsfmSelfTest</name>
        <message>
            <location filename="../gui/selftest.py" line="116" />
            <source>Backend answers</source>
            <translation>Backend antwortet</translation>
        </message>
        <message>
            <location filename="../gui/selftest.py" line="118" />
            <source>Device</source>
            <translation>Gerät</translation>
        </message>
        <message>
            <location filename="../gui/selftest.py" line="122" />
            <source>none; add a model folder in Settings</source>
            <translation>keine; fügen Sie in den Einstellungen einen Modellordner hinzu</translation>
        </message>
        <message>
            <location filename="../gui/selftest.py" line="126" />
            <source>Models installed</source>
            <translation>Installierte Modelle</translation>
        </message>
        <message>
            <location filename="../gui/selftest.py" line="131" />
            <source>skipped: no model installed</source>
            <translation>übersprungen: kein Modell installiert</translation>
        </message>
        <message>
            <location filename="../gui/selftest.py" line="155" />
            <source>CRS round-trip</source>
            <translation>KBS-Hin- und Rücktransformation</translation>
        </message>
        <message>
            <location filename="../gui/selftest.py" line="157" />
            <source>Tiny model run</source>
            <translation>Kleiner Modelllauf</translation>
        </message>
        <message>
            <location filename="../gui/selftest.py" line="193" />
            <source>RSFM self-test and diagnostics</source>
            <translation>RSFM-Selbsttest und Diagnose</translation>
        </message>
        <message>
            <location filename="../gui/selftest.py" line="208" />
            <source>Copy report</source>
            <translation>Bericht kopieren</translation>
        </message>
        <message>
            <location filename="../gui/selftest.py" line="210" />
            <source>Run again</source>
            <translation>Erneut ausführen</translation>
        </message>
        <message>
            <location filename="../gui/selftest.py" line="221" />
            <source>Running checks…</source>
            <translation>Prüfungen laufen…</translation>
        </message>
        <message>
            <location filename="../gui/selftest.py" line="222" />
            <source>RSFM self-test</source>
            <translation>RSFM-Selbsttest</translation>
        </message>
        <message>
            <location filename="../gui/selftest.py" line="234" />
            <source>Self-test could not run: {error}</source>
            <translation>Der Selbsttest konnte nicht ausgeführt werden: {error}</translation>
        </message>
        <message>
            <location filename="../gui/selftest.py" line="239" />
            <source>{passed}/{total} checks passed</source>
            <translation>{passed}/{total} Prüfungen bestanden</translation>
        </message>
    </context>
    <context>
        <name>RsfmSettings</name>
        <message>
            <location filename="../gui/settings_dialog.py" line="104" />
            <source>Model folders</source>
            <translation>Modellordner</translation>
        </message>
        <message>
            <location filename="../gui/settings_dialog.py" line="108" />
            <source>Hugging Face endpoint</source>
            <translation>Hugging-Face-Endpunkt</translation>
        </message>
        <message>
            <location filename="../gui/settings_dialog.py" line="111" />
            <source>Only needed for gated or private model repositories</source>
            <translation>Nur für zugangsbeschränkte oder private Modell-Repositorys nötig</translation>
        </message>
        <message>
            <location filename="../gui/settings_dialog.py" line="112" />
            <source>Hugging Face token</source>
            <translation>Hugging-Face-Token</translation>
        </message>
        <message>
            <location filename="../gui/settings_dialog.py" line="119" />
            <source>Results and backend</source>
            <translation>Ergebnisse und Backend</translation>
        </message>
        <message>
            <location filename="../gui/settings_dialog.py" line="125" />
            <source>Output folder</source>
            <translation>Ausgabeordner</translation>
        </message>
        <message>
            <location filename="../gui/settings_dialog.py" line="126" />
            <source>Stop the backend when QGIS closes (if this QGIS started it)</source>
            <translation>Backend beim Schließen von QGIS beenden (wenn dieses QGIS es gestartet hat)</translation>
        </message>
        <message>
            <location filename="../gui/settings_dialog.py" line="130" />
            <source>Restart backend</source>
            <translation>Backend neu starten</translation>
        </message>
        <message>
            <location filename="../gui/settings_dialog.py" line="132" />
            <source>Stop backend</source>
            <translation>Backend beenden</translation>
        </message>
        <message>
            <location filename="../gui/settings_dialog.py" line="147" />
            <source>Folder with model packages</source>
            <translation>Ordner mit Modellpaketen</translation>
        </message>
        <message>
            <location filename="../gui/settings_dialog.py" line="180" />
            <source>Restarting…</source>
            <translation>Wird neu gestartet…</translation>
        </message>
        <message>
            <location filename="../gui/settings_dialog.py" line="187" />
            <source>Stopped.</source>
            <translation>Beendet.</translation>
        </message>
        <message>
            <location filename="../gui/settings_dialog.py" line="187" />
            <source>This QGIS did not start the backend; it is left running.</source>
            <translation>Dieses QGIS hat das Backend nicht gestartet; es läuft weiter.</translation>
        </message>
        <message>
            <location filename="../gui/settings_dialog.py" line="199" />
            <source>Creating {folder} and installing {package} …</source>
            <translation>{folder} wird angelegt und {package} installiert …</translation>
        </message>
        <message>
            <location filename="../gui/settings_dialog.py" line="47" />
            <source>RSFM settings</source>
            <translation>RSFM-Einstellungen</translation>
        </message>
        <message>
            <location filename="../gui/settings_dialog.py" line="55" />
            <source>Backend environment (its own Python with PyTorch; QGIS never loads torch)</source>
            <translation>Backend-Umgebung (eigenes Python mit PyTorch; QGIS lädt nie torch)</translation>
        </message>
        <message>
            <location filename="../gui/settings_dialog.py" line="59" />
            <source>not set – create a venv below</source>
            <translation>nicht gesetzt – unten eine venv anlegen</translation>
        </message>
        <message>
            <location filename="../gui/settings_dialog.py" line="60" />
            <source>Backend Python</source>
            <translation>Backend-Python</translation>
        </message>
        <message>
            <location filename="../gui/settings_dialog.py" line="65" />
            <source>Venv folder</source>
            <translation>Venv-Ordner</translation>
        </message>
        <message>
            <location filename="../gui/settings_dialog.py" line="67" />
            <source>What pip installs: 'rsfm[backend]', or the path of an RSFM source folder followed by [backend]</source>
            <translation>Was pip installiert: „rsfm[backend]“ oder der Pfad eines RSFM-Quellordners gefolgt von [backend]</translation>
        </message>
        <message>
            <location filename="../gui/settings_dialog.py" line="69" />
            <source>Backend package</source>
            <translation>Backend-Paket</translation>
        </message>
        <message>
            <location filename="../gui/settings_dialog.py" line="71" />
            <source>Create backend venv</source>
            <translation>Backend-venv anlegen</translation>
        </message>
        <message>
            <location filename="../gui/settings_dialog.py" line="82" />
            <source>pip output appears here</source>
            <translation>Hier erscheint die Ausgabe von pip</translation>
        </message>
        <message>
            <location filename="../gui/settings_dialog.py" line="87" />
            <source>Device</source>
            <translation>Gerät</translation>
        </message>
        <message>
            <location filename="../gui/settings_dialog.py" line="90" />
            <source>Models</source>
            <translation>Modelle</translation>
        </message>
        <message>
            <location filename="../gui/settings_dialog.py" line="96" />
            <source>Add folder…</source>
            <translation>Ordner hinzufügen…</translation>
        </message>
        <message>
            <location filename="../gui/settings_dialog.py" line="97" />
            <source>Remove</source>
            <translation>Entfernen</translation>
        </message>
    </context>
    <context>
        <name>RsfmTaskPage</name>
        <message>
            <location filename="../gui/task_page.py" line="147" />
            <source>Before image</source>
            <translation>Vorher-Bild</translation>
        </message>
        <message>
            <location filename="../gui/task_page.py" line="147" />
            <source>Raster layer</source>
            <translation>Rasterlayer</translation>
        </message>
        <message>
            <location filename="../gui/task_page.py" line="152" />
            <source>After image</source>
            <translation>Nachher-Bild</translation>
        </message>
        <message>
            <location filename="../gui/task_page.py" line="155" />
            <source>Selected polygons</source>
            <translation>Ausgewählte Polygone</translation>
        </message>
        <message>
            <location filename="../gui/task_page.py" line="155" />
            <source>Visible map extent</source>
            <translation>Sichtbarer Kartenausschnitt</translation>
        </message>
        <message>
            <location filename="../gui/task_page.py" line="155" />
            <source>Whole layer</source>
            <translation>Ganzer Layer</translation>
        </message>
        <message>
            <location filename="../gui/task_page.py" line="158" />
            <source>Selected polygons: only the inside of the selected features is processed; outside them the result is empty (nodata).</source>
            <translation>Ausgewählte Polygone: Nur das Innere der ausgewählten Objekte wird verarbeitet; außerhalb bleibt das Ergebnis leer (NoData).</translation>
        </message>
        <message>
            <location filename="../gui/task_page.py" line="160" />
            <source>Area</source>
            <translation>Bereich</translation>
        </message>
        <message>
            <location filename="../gui/task_page.py" line="163" />
            <source>Polygon layer</source>
            <translation>Polygonlayer</translation>
        </message>
        <message>
            <location filename="../gui/task_page.py" line="168" />
            <source>Per selected polygon</source>
            <translation>Je ausgewähltem Polygon</translation>
        </message>
        <message>
            <location filename="../gui/task_page.py" line="168" />
            <source>Per tile (grid)</source>
            <translation>Je Kachel (Raster)</translation>
        </message>
        <message>
            <location filename="../gui/task_page.py" line="169" />
            <source>Per selected polygon: each selected polygon gets one scene class, from the model's probabilities averaged over the tiles covering it.</source>
            <translation>Je ausgewähltem Polygon: Jedes ausgewählte Polygon erhält eine Szenenklasse aus den über die abdeckenden Kacheln gemittelten Wahrscheinlichkeiten des Modells.</translation>
        </message>
        <message>
            <location filename="../gui/task_page.py" line="171" />
            <source>Classify</source>
            <translation>Klassifizieren</translation>
        </message>
        <message>
            <location filename="../gui/task_page.py" line="177" />
            <source>Model</source>
            <translation>Modell</translation>
        </message>
        <message>
            <location filename="../gui/task_page.py" line="178" />
            <source>Also list models that do not fit this layer</source>
            <translation>Auch Modelle anzeigen, die nicht zu diesem Layer passen</translation>
        </message>
        <message>
            <location filename="../gui/task_page.py" line="186" />
            <source>Advanced options</source>
            <translation>Erweiterte Optionen</translation>
        </message>
        <message>
            <location filename="../gui/task_page.py" line="193" />
            <source>Tile size</source>
            <translation>Kachelgröße</translation>
        </message>
        <message>
            <location filename="../gui/task_page.py" line="199" />
            <source>Tile overlap</source>
            <translation>Kachelüberlappung</translation>
        </message>
        <message>
            <location filename="../gui/task_page.py" line="203" />
            <source>Batch size</source>
            <translation>Batchgröße</translation>
        </message>
        <message>
            <location filename="../gui/task_page.py" line="210" />
            <source>model default</source>
            <translation>Modellvorgabe</translation>
        </message>
        <message>
            <location filename="../gui/task_page.py" line="211" />
            <source>Score threshold</source>
            <translation>Konfidenzschwelle</translation>
        </message>
        <message>
            <location filename="../gui/task_page.py" line="214" />
            <source>Also write polygons (GeoPackage)</source>
            <translation>Auch Polygone schreiben (GeoPackage)</translation>
        </message>
        <message>
            <location filename="../gui/task_page.py" line="216" />
            <source>Run even if the pixel size is far from the model's</source>
            <translation>Auch ausführen, wenn die Pixelgröße stark von der des Modells abweicht</translation>
        </message>
        <message>
            <location filename="../gui/task_page.py" line="223" />
            <source>default output folder (Settings)</source>
            <translation>Standard-Ausgabeordner (Einstellungen)</translation>
        </message>
        <message>
            <location filename="../gui/task_page.py" line="224" />
            <source>Output folder</source>
            <translation>Ausgabeordner</translation>
        </message>
        <message>
            <location filename="../gui/task_page.py" line="228" />
            <source>Run</source>
            <translation>Ausführen</translation>
        </message>
        <message>
            <location filename="../gui/task_page.py" line="229" />
            <source>Cancel</source>
            <translation>Abbrechen</translation>
        </message>
        <message>
            <location filename="../gui/task_page.py" line="239" />
            <source>Ready.</source>
            <translation>Bereit.</translation>
        </message>
        <message>
            <location filename="../gui/task_page.py" line="314" />
            <source>No model for this task is installed. Open the model browser or add a model folder in Settings.</source>
            <translation>Für diese Aufgabe ist kein Modell installiert. Öffnen Sie den Modellbrowser oder fügen Sie in den Einstellungen einen Modellordner hinzu.</translation>
        </message>
        <message>
            <location filename="../gui/task_page.py" line="317" />
            <source>Add a raster layer to the project to run this task.</source>
            <translation>Fügen Sie dem Projekt einen Rasterlayer hinzu, um diese Aufgabe auszuführen.</translation>
        </message>
        <message>
            <location filename="../gui/task_page.py" line="319" />
            <source>None of the {n} installed models fits this layer; tick 'Also list models that do not fit' to see why.</source>
            <translation>Keines der {n} installierten Modelle passt zu diesem Layer; aktivieren Sie „Auch Modelle anzeigen, die nicht passen“, um den Grund zu sehen.</translation>
        </message>
        <message>
            <location filename="../gui/task_page.py" line="332" />
            <source>fits the layer</source>
            <translation>passt zum Layer</translation>
        </message>
        <message>
            <location filename="../gui/task_page.py" line="347" />
            <source>choose the polygon layer whose selected features define the area</source>
            <translation>wählen Sie den Polygonlayer, dessen ausgewählte Objekte den Bereich festlegen</translation>
        </message>
        <message>
            <location filename="../gui/task_page.py" line="356" />
            <source>choose the input raster layer(s) first</source>
            <translation>wählen Sie zuerst den/die Eingaberasterlayer</translation>
        </message>
        <message>
            <location filename="../gui/task_page.py" line="359" />
            <source>choose a model first</source>
            <translation>wählen Sie zuerst ein Modell</translation>
        </message>
        <message>
            <location filename="../gui/task_page.py" line="368" />
            <source>classifying per polygon needs Area: Selected polygons; select the polygons to classify</source>
            <translation>die Klassifizierung je Polygon braucht Bereich: Ausgewählte Polygone; wählen Sie die zu klassifizierenden Polygone aus</translation>
        </message>
        <message>
            <location filename="../gui/task_page.py" line="417" />
            <source>RSFM: {task} on {layer}</source>
            <translation>RSFM: {task} für {layer}</translation>
        </message>
        <message>
            <location filename="../gui/task_page.py" line="425" />
            <source>Running… (you can keep working; see also the task manager)</source>
            <translation>Läuft… (Sie können weiterarbeiten; siehe auch die Aufgabenverwaltung)</translation>
        </message>
        <message>
            <location filename="../gui/task_page.py" line="435" />
            <source>Cancelling after the current tile…</source>
            <translation>Wird nach der aktuellen Kachel abgebrochen…</translation>
        </message>
        <message>
            <location filename="../gui/task_page.py" line="454" />
            <source>Done: 1 layer added to 'RSFM results'.</source>
            <translation>Fertig: 1 Layer zur Gruppe „RSFM results“ hinzugefügt.</translation>
        </message>
        <message>
            <location filename="../gui/task_page.py" line="454" />
            <source>Done: {n} layers added to 'RSFM results'.</source>
            <translation>Fertig: {n} Layer zur Gruppe „RSFM results“ hinzugefügt.</translation>
        </message>
        <message>
            <location filename="../gui/task_page.py" line="463" />
            <source>Cancelled; nothing was added.</source>
            <translation>Abgebrochen; es wurde nichts hinzugefügt.</translation>
        </message>
        <message>
            <location filename="../gui/task_page.py" line="60" />
            <source>Change detection</source>
            <translation>Änderungserkennung</translation>
        </message>
        <message>
            <location filename="../gui/task_page.py" line="60" />
            <source>Compare a before and an after image of the same place and map what changed.</source>
            <translation>Ein Vorher- und ein Nachher-Bild desselben Ortes vergleichen und kartieren, was sich geändert hat.</translation>
        </message>
        <message>
            <location filename="../gui/task_page.py" line="60" />
            <source>Find objects and draw their boxes as polygons with class and score.</source>
            <translation>Objekte finden und ihre Rahmen als Polygone mit Klasse und Konfidenz zeichnen.</translation>
        </message>
        <message>
            <location filename="../gui/task_page.py" line="60" />
            <source>Find ships, planes and vehicles at any heading; boxes keep their angle, length and width.</source>
            <translation>Schiffe, Flugzeuge und Fahrzeuge in jeder Ausrichtung finden; die Rahmen behalten Winkel, Länge und Breite.</translation>
        </message>
        <message>
            <location filename="../gui/task_page.py" line="60" />
            <source>Give each tile of the image a scene class (airport, forest, residential, ...) with a score.</source>
            <translation>Jeder Kachel des Bildes eine Szenenklasse (Flughafen, Wald, Wohngebiet, …) mit Konfidenz zuweisen.</translation>
        </message>
        <message>
            <location filename="../gui/task_page.py" line="60" />
            <source>Instance segmentation</source>
            <translation>Instanzsegmentierung</translation>
        </message>
        <message>
            <location filename="../gui/task_page.py" line="60" />
            <source>Label every pixel with a land-cover class; writes a coloured class raster (and polygons if asked).</source>
            <translation>Jedem Pixel eine Landbedeckungsklasse zuweisen; schreibt ein farbiges Klassenraster (und auf Wunsch Polygone).</translation>
        </message>
        <message>
            <location filename="../gui/task_page.py" line="60" />
            <source>Land-cover segmentation</source>
            <translation>Landbedeckungs-Segmentierung</translation>
        </message>
        <message>
            <location filename="../gui/task_page.py" line="60" />
            <source>Object detection</source>
            <translation>Objekterkennung</translation>
        </message>
        <message>
            <location filename="../gui/task_page.py" line="60" />
            <source>Outline each object (building, vehicle, ...) as its own polygon.</source>
            <translation>Jedes Objekt (Gebäude, Fahrzeug, …) als eigenes Polygon umreißen.</translation>
        </message>
        <message>
            <location filename="../gui/task_page.py" line="60" />
            <source>Rotated-box detection</source>
            <translation>Erkennung mit gedrehten Rahmen</translation>
        </message>
        <message>
            <location filename="../gui/task_page.py" line="60" />
            <source>Scene classification</source>
            <translation>Szenenklassifizierung</translation>
        </message>
        <message>
            <location filename="../gui/task_page.py" line="90" />
            <source>The before image '{before}' and the after image '{after}' do not overlap, so there is nothing to compare. Choose two images of the same place (they may use different CRSs).</source>
            <translation>Das Vorher-Bild „{before}“ und das Nachher-Bild „{after}“ überlappen sich nicht, es gibt also nichts zu vergleichen. Wählen Sie zwei Bilder desselben Ortes (sie dürfen unterschiedliche KBS haben).</translation>
        </message>
        <message>
            <location filename="../gui/task_page.py" line="94" />
            <source>The RSFM backend stopped while the job was running (it may have crashed or been closed), so the job was lost. Run again: the backend is restarted automatically. If this repeats, see Settings &gt; Self-test for the backend log.</source>
            <translation>Das RSFM-Backend wurde während des Auftrags beendet (es ist vielleicht abgestürzt oder wurde geschlossen), daher ging der Auftrag verloren. Führen Sie ihn erneut aus: Das Backend wird automatisch neu gestartet. Wenn das wiederholt passiert, finden Sie unter Einstellungen &gt; Selbsttest das Backend-Protokoll.</translation>
        </message>
    </context>
</TS>
