<!DOCTYPE qgis PUBLIC 'http://mrcc.com/qgis.dtd' 'SYSTEM'>
<qgis styleCategories="Symbology|Rendering" version="3.22.16-Białowieża">
  <!-- Tree-top reference points: matched green (in exactly one crown), missed orange. -->
  <renderer-v2 forceraster="0" symbollevels="0" enableorderby="0" type="categorizedSymbol" attr="status" referencescale="-1">
    <categories>
      <category render="true" value="matched" symbol="0" label="matched: crown found the tree"/>
      <category render="true" value="missed" symbol="1" label="missed: reference crown not found"/>
    </categories>
    <symbols>
      <symbol clip_to_extent="1" force_rhr="0" type="marker" alpha="1" name="0">
        <layer pass="0" class="SimpleMarker" enabled="1" locked="0">
          <Option type="Map">
            <Option type="QString" value="51,160,44,255" name="color"/>
            <Option type="QString" value="35,35,35,255" name="outline_color"/>
            <Option type="QString" value="0.3" name="outline_width"/>
            <Option type="QString" value="circle" name="name"/>
            <Option type="QString" value="2.2" name="size"/>
            <Option type="QString" value="MM" name="size_unit"/>
          </Option>
        </layer>
      </symbol>
      <symbol clip_to_extent="1" force_rhr="0" type="marker" alpha="1" name="1">
        <layer pass="0" class="SimpleMarker" enabled="1" locked="0">
          <Option type="Map">
            <Option type="QString" value="255,127,0,255" name="color"/>
            <Option type="QString" value="35,35,35,255" name="outline_color"/>
            <Option type="QString" value="0.3" name="outline_width"/>
            <Option type="QString" value="circle" name="name"/>
            <Option type="QString" value="2.2" name="size"/>
            <Option type="QString" value="MM" name="size_unit"/>
          </Option>
        </layer>
      </symbol>
    </symbols>
  </renderer-v2>
</qgis>
