"""The word list text prompts are built from when no tokenizer is named: common lower-case English words,
each one token with its leading space (" the", " water"), so a prompt of n words is n tokens. Checked
against GPT-2, cl100k_base, o200k_base (gpt-tokenizer 4.0.0), Llama 3 (llama3-tokenizer-js 1.2.0) and
Llama 2 (llama-tokenizer-js 1.2.2): every word is one token in each. With a tokenizer
(`endpoint.tokenizer`), words that are not one token in it are left out (harness/prompts.py).
"""
WORDS = tuple("""
the of and to in is was for that with on as by at from his her this which but not are be have had they you
were their one all we can has there been if more when will would who so no out up into do than time only
other new some could these two may first then any like now its over such our man me even most made after
also did many before must years back where much your way well down should because each just those people how
too little state good very make world still own see men work long here get both between life being under
never day same another know while last might us great old year off come since against go came right used
take three states himself few house use during without again place around however home small found thought
went say part once general high upon school every does got left number course war until always away
something fact though water less public put think almost hand enough far took head yet government system
better set told nothing night end why called find going look asked later knew point next city business give
group toward young let room president side social given present several order national possible rather
second face per among form important often things looked early white case become large big need four within
felt along children saw best church ever least power development light thing seemed family interest want
members mind country area others done turned although open problem sense service began help certain times
matter money fire held free show real eyes half door different whole change keep word seen question local
table court level strong read policy major girl body study quite market field days music south black became
ago human line brought car type taken community short clear voice love cut art force class east close future
past above idea data sure center action full west care law stood north party top office death note kind hard
police report sound soon red true support role game range heart moment air turn paper common value view lot
child result effect seems board living stay list plan road town woman friend story letter month nature hope
model land size press bad feel fine cost army lead truth figure blood base floor trade deal date bed sun tax
act ball drug fish gas god hall hat hot ice job key king lady leg lie mom net oil pay pen pot rock rule run
sea sir sky son tea test tree vote wall wife win wine wood yard yes zone baby bank bar bill bird book box
boy camp card cat chair cell coach cold cook copy corn crew dark dog dream dress drink drop dust duty earth
edge egg error event exam farm fan fear fee film finger flag flat flight food foot fruit fund gift glass
gold golf green guest guide gun hair hell hero hill hole horse host hour husband island item judge kid
kitchen lake layer leader leaf link magazine manner map mark meat media memory metal milk mission moon
mountain mouth movie name neck news nose ocean option owner page pain pair park path peace phone photo piece
pilot plant plate player pocket poem poet pool port post price prison profit queen radio rain rate region
rest rice ring risk river roof root rose salt sand scene score seat seed shape share sheet ship shop shot
sign silver sister site skill skin sleep smile snow song soul source space speech spirit sport spring staff
stage star station step stone store storm street style sugar summer surface task taste teacher team term
text theory ticket tone tool topic tour tower track train trip union unit user vehicle victim video village
visit wave weapon weather week weight wheel window winter wish writer youth
""".split())
